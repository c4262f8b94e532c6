"""The Triton linear scan against the loop reference: outputs, final state and every gradient.

The Triton cases run on KERNEL_DEVICE (CUDA when present, else the CPU under TRITON_INTERPRET=1,
set by tests/conftest.py), so shapes are small. The reference runs in float64/complex128 on the
CPU on copies of the inputs; both sides get the same random upstream gradients on h and on the
final state.
"""

from __future__ import annotations

import pytest
import torch

import kernels.linear_scan as linear_scan_package
from kernels.linear_scan import linear_scan, linear_scan_naive
from tests.kernels.device import KERNEL_DEVICE, on_cpu

TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.complex64: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}
WIDE = {torch.float32: torch.float64, torch.complex64: torch.complex128, torch.bfloat16: torch.float64}


def random_inputs(batch_size, length, state_shape, reset_probability, dtype, device="cpu", seed=0):
    """Decays of magnitude in [0.5, 1) (random phase if complex), resets at the given rate, and
    batch row 0 always starting with a reset so the initial-state cut is exercised."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, length, *state_shape)
    magnitude = 0.5 + 0.5 * torch.rand(shape, generator=generator, dtype=torch.float64)
    if dtype.is_complex:
        phase = 2 * torch.pi * torch.rand(shape, generator=generator, dtype=torch.float64)
        a = torch.polar(magnitude, phase)
        b = torch.randn(shape, generator=generator, dtype=torch.complex128)
        initial_state = torch.randn((batch_size, *state_shape), generator=generator, dtype=torch.complex128)
    else:
        sign = torch.where(torch.rand(shape, generator=generator) < 0.2, -1.0, 1.0).double()
        a = magnitude * sign
        b = torch.randn(shape, generator=generator, dtype=torch.float64)
        initial_state = torch.randn((batch_size, *state_shape), generator=generator, dtype=torch.float64)
    reset = torch.rand(batch_size, length, generator=generator) < reset_probability
    if reset_probability > 0:
        reset[0, 0] = True
    wide = WIDE[dtype]
    grad_h = torch.randn(shape, generator=generator, dtype=wide)
    grad_final = torch.randn((batch_size, *state_shape), generator=generator, dtype=wide)
    tensors = (a, b, initial_state, grad_h, grad_final)
    return reset.to(device), *(tensor.to(device=device, dtype=dtype) for tensor in tensors)


def run_with_grads(a, b, reset, initial_state, grad_h, grad_final, impl, dtype):
    """Forward + backward at `dtype` on fresh leaves; returns (h, h_T, grad_a, grad_b, grad_initial)."""
    leaves = [tensor.detach().to(dtype).requires_grad_() for tensor in (a, b, initial_state)]
    h, final_state = linear_scan(leaves[0], leaves[1], reset, leaves[2], impl=impl)
    grads = torch.autograd.grad((h, final_state), leaves, (grad_h.to(dtype), grad_final.to(dtype)))
    return (h.detach(), final_state.detach(), *grads)


def assert_matches_reference(batch_size, length, state_shape, reset_probability, dtype, device=KERNEL_DEVICE,
                             tolerance=None, impl="triton", per_channel_decay=False):
    """`impl` on `device` against the naive loop in float64 on the CPU; with per_channel_decay, a is
    one [*S] decay shared by every row and step."""
    reset, a, b, initial_state, grad_h, grad_final = random_inputs(
        batch_size, length, state_shape, reset_probability, dtype, device
    )
    if per_channel_decay:
        a = a[0, 0].contiguous()
    got = run_with_grads(a, b, reset, initial_state, grad_h, grad_final, impl, dtype)
    expected = run_with_grads(*on_cpu((a, b, reset, initial_state, grad_h, grad_final)), "naive", WIDE[dtype])
    for name, value, reference in zip(("h", "final_state", "grad_a", "grad_b", "grad_initial_state"), got, expected):
        assert value.dtype == dtype and value.shape == reference.shape, name
        torch.testing.assert_close(
            value.cpu(), reference.to(dtype), **(tolerance or TOLERANCES[dtype]), msg=lambda text: f"{name}: {text}"
        )


CASES = [
    pytest.param(batch_size, length, channels, reset_probability, dtype, id=f"B{batch_size}-T{length}-D{channels}-reset{reset_probability}-{str(dtype)[6:]}")
    for dtype in (torch.float32, torch.complex64)
    for batch_size, length, channels, reset_probability in (
        (2, 1, 16, 0.1),
        (2, 63, 16, 0.1),
        (2, 100, 16, 0.1),
        (3, 63, 5, 0.0),
        (1, 63, 40, 1.0),
    )
]


@pytest.mark.parametrize("batch_size, length, channels, reset_probability, dtype", CASES)
def test_triton_matches_naive(batch_size, length, channels, reset_probability, dtype):
    assert_matches_reference(batch_size, length, (channels,), reset_probability, dtype)


@pytest.mark.parametrize("batch_size, length, channels, reset_probability, dtype", CASES)
def test_parallel_torch_scan_matches_naive(batch_size, length, channels, reset_probability, dtype):
    assert_matches_reference(batch_size, length, (channels,), reset_probability, dtype, impl="parallel")


PER_CHANNEL_CASES = [
    pytest.param(batch_size, length, reset_probability, dtype, id=f"B{batch_size}-T{length}-reset{reset_probability}-{str(dtype)[6:]}")
    for batch_size, length, reset_probability, dtype in (
        (2, 1, 0.1, torch.complex64), (2, 63, 0.1, torch.float32), (3, 100, 0.05, torch.complex64),
    )
]


@pytest.mark.parametrize("batch_size, length, reset_probability, dtype", PER_CHANNEL_CASES)
@pytest.mark.parametrize("impl", ["triton", "parallel"])
def test_per_channel_decay_matches_naive(batch_size, length, reset_probability, dtype, impl):
    """S4/S5's decay: one [D] vector (never expanded to [B, T, D] in the kernel), its gradient [D]
    summed over rows and steps."""
    assert_matches_reference(batch_size, length, (12,), reset_probability, dtype, impl=impl, per_channel_decay=True)


def test_per_channel_decay_over_trailing_state_dims():
    assert_matches_reference(2, 33, (3, 5), 0.1, torch.complex64, per_channel_decay=True)


def test_rejects_a_decay_of_another_shape():
    b = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="a per-channel decay"):
        linear_scan(torch.ones(3, 4), b, torch.zeros(2, 3, dtype=torch.bool), impl="triton")


def test_parallel_torch_scan_takes_expanded_decays_and_a_missing_upstream_gradient():
    """S4 passes one decay per channel expanded over [B, T]; only the final state may be used."""
    reset, a, b, initial_state, _, grad_final = random_inputs(2, 37, (6,), 0.1, torch.complex64)
    results = []
    for impl in ("parallel", "naive"):
        decay = a[:1, :1].clone().requires_grad_()
        drive, initial = b.clone().requires_grad_(), initial_state.clone().requires_grad_()
        _, final_state = linear_scan(decay.expand_as(b), drive, reset, initial, impl=impl)
        results.append((final_state, *torch.autograd.grad(final_state, (decay, drive, initial), grad_final)))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, **TOLERANCES[torch.complex64])


def test_trailing_state_dims_are_flattened():
    assert_matches_reference(2, 33, (3, 5), 0.1, torch.complex64)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=["float32", "complex64"])
def test_long_sequence_matches_naive(dtype):
    assert_matches_reference(2, 1000, (16,), 0.01, dtype)


def test_bfloat16_matches_naive_at_loose_tolerance():
    assert_matches_reference(2, 100, (16,), 0.1, torch.bfloat16)


def test_reset_cuts_every_gradient_path_across_it():
    reset, a, b, initial_state, grad_h, grad_final = random_inputs(1, 40, (8,), 0.0, torch.float32, KERNEL_DEVICE)
    reset[0, 20] = True
    leaves = [tensor.clone().requires_grad_() for tensor in (a, b, initial_state)]
    h, _ = linear_scan(*leaves[:2], reset, leaves[2], impl="triton")
    grad_a, grad_b, grad_initial = torch.autograd.grad(h[:, 20:].sum(), leaves)
    assert torch.all(grad_a[:, :21] == 0) and torch.all(grad_b[:, :20] == 0) and torch.all(grad_initial == 0)
    assert grad_b[:, 20:].abs().min() > 1e-3


def test_auto_uses_parallel_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(linear_scan_package, "_triton_module", lambda: pytest.fail("auto picked triton on CPU"))
    reset, a, b, initial_state, _, _ = random_inputs(2, 10, (4,), 0.1, torch.float32)
    h, _ = linear_scan(a, b, reset, initial_state, impl="auto")
    torch.testing.assert_close(h, linear_scan_naive(a, b, reset, initial_state)[0])


def test_rejects_unsupported_dtype():
    a = torch.ones(2, 3, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="supports dtypes"):
        linear_scan(a, a, torch.zeros(2, 3, dtype=torch.bool), impl="triton")


def test_rejects_initial_state_of_another_dtype():
    a = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="initial_state must have the dtype of a"):
        linear_scan(a, a, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.float64), impl="triton")


def test_rejects_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    a = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        linear_scan(a, a, torch.zeros(2, 3, dtype=torch.bool), impl="triton")


def test_rejects_unknown_impl():
    a = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="impl must be one of"):
        linear_scan(a, a, torch.zeros(2, 3, dtype=torch.bool), impl="cuda")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bfloat16], ids=["float32", "complex64", "bfloat16"])
@pytest.mark.parametrize("batch_size, length", [(64, 1024), (4, 8192)], ids=["B64-T1024-D256", "B4-T8192-D256"])
def test_cuda_realistic_shapes(batch_size, length, dtype):
    # Long sums of float32 products: a bound a little looser than at the interpreter's small shapes.
    tolerance = dict(atol=1e-4, rtol=1e-4) if dtype != torch.bfloat16 else None
    assert_matches_reference(batch_size, length, (256,), 0.01, dtype, device="cuda", tolerance=tolerance)


def test_device_guard_enters_the_cuda_device_of_the_tensor(monkeypatch):
    """Triton launches on the current device: every launch runs under `kernels.device_guard`, which
    must select the tensor's own GPU (a cuda:1 tensor outside torchrun) and do nothing on the CPU."""
    import contextlib
    import types

    from kernels import device_guard

    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    with device_guard(types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 1))):
        inside_cuda_guard = list(entered)
    with device_guard(torch.zeros(1)):
        inside_cpu_guard = list(entered)
    assert inside_cuda_guard == [torch.device("cuda", 1)], "the guard must select the tensor's GPU before the launch"
    assert inside_cpu_guard == [torch.device("cuda", 1)], "a CPU tensor must not select any GPU"


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_runs_on_the_second_gpu():
    assert_matches_reference(2, 100, (64,), 0.1, torch.float32, device=torch.device("cuda", 1))

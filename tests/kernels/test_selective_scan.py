"""The Triton selective scan against the loop reference: output, final state and every gradient.

The Triton cases run on KERNEL_DEVICE (CUDA when present, else the CPU under TRITON_INTERPRET=1,
set by tests/conftest.py), so shapes are small. The reference runs in float64 on the CPU on copies
of the same inputs; both sides get the same random upstream gradients on y and on the final state.
"""

from __future__ import annotations

import pytest
import torch

import kernels.selective_scan as selective_scan_package
from kernels.selective_scan import selective_scan, selective_scan_naive
from kernels.selective_scan import triton as triton_module
from tests.kernels.device import KERNEL_DEVICE

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def random_inputs(batch_size, length, channels, state_size, reset_probability, skip=True, gate=True, initial=True,
                  device="cpu", seed=0):
    """float64 inputs (None for the optional ones left out), resets at the given rate with batch
    row 0 starting on a reset so the initial-state cut is exercised, and upstream gradients."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = {
        "u": randn(batch_size, length, channels),
        "delta": torch.nn.functional.softplus(randn(batch_size, length, channels)),
        "A": -torch.exp(0.5 * randn(channels, state_size)),
        "B": randn(batch_size, length, state_size),
        "C": randn(batch_size, length, state_size),
        "D": randn(channels) if skip else None,
        "z": randn(batch_size, length, channels) if gate else None,
        "initial_state": randn(batch_size, channels, state_size) if initial else None,
    }
    reset = torch.rand(batch_size, length, generator=generator) < reset_probability
    if reset_probability > 0:
        reset[0, 0] = True
    grad_y = randn(batch_size, length, channels)
    grad_final = randn(batch_size, channels, state_size)
    inputs = {name: None if value is None else value.to(device) for name, value in inputs.items()}
    return inputs, reset.to(device), grad_y.to(device), grad_final.to(device)


def run_with_grads(inputs, reset, grad_y, grad_final, impl, dtype):
    """Forward + backward at `dtype` on fresh leaves: {"y", "final_state", "grad_<input>" ...}."""
    leaves = {name: value.to(dtype).requires_grad_() for name, value in inputs.items() if value is not None}
    y, final_state = selective_scan(**leaves, reset=reset, impl=impl)
    grads = torch.autograd.grad((y, final_state), list(leaves.values()), (grad_y.to(dtype), grad_final.to(dtype)))
    grads = {f"grad_{name}": grad for name, grad in zip(leaves, grads)}
    return {"y": y.detach(), "final_state": final_state.detach(), **grads}


def assert_matches_reference(batch_size, length, channels, state_size, reset_probability, device=KERNEL_DEVICE,
                             **options):
    """The Triton kernel on `device` against the naive loop in float64 on the CPU."""
    inputs, reset, grad_y, grad_final = random_inputs(
        batch_size, length, channels, state_size, reset_probability, **options
    )
    on_device = {name: None if value is None else value.to(device) for name, value in inputs.items()}
    got = run_with_grads(on_device, reset.to(device), grad_y.to(device), grad_final.to(device), "triton", torch.float32)
    expected = run_with_grads(inputs, reset, grad_y, grad_final, "naive", torch.float64)
    assert got.keys() == expected.keys()
    for name, reference in expected.items():
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name].cpu(), reference.float(), **TOLERANCE,
                                   msg=lambda text, name=name: f"{name}: {text}")


def case(batch_size, length, channels, state_size, reset_probability, **options):
    left_out = "".join(f"-no_{name}" for name, used in options.items() if not used)
    name = f"B{batch_size}-T{length}-D{channels}-N{state_size}-reset{reset_probability}{left_out}"
    return pytest.param(batch_size, length, channels, state_size, reset_probability, options, id=name)


CASES = [
    case(2, 1, 8, 4, 0.1),
    case(2, 63, 8, 4, 0.1),
    case(2, 63, 4, 8, 0.1),
    case(2, 100, 6, 4, 0.0, gate=False, initial=False),
    case(2, 63, 5, 3, 0.3, skip=False),
    case(1, 40, 4, 4, 1.0, skip=False, gate=False),
]


@pytest.mark.parametrize("batch_size, length, channels, state_size, reset_probability, options", CASES)
def test_triton_matches_naive(batch_size, length, channels, state_size, reset_probability, options):
    assert_matches_reference(batch_size, length, channels, state_size, reset_probability, **options)


def test_several_channel_blocks_add_up_their_B_and_C_gradients(monkeypatch):
    """Two channels per program, so five channels take three programs per batch row (the last
    one half masked) whose partial dB, dC, dA and dD must be summed."""
    tile = triton_module.CHUNK_T * 2 * 4
    monkeypatch.setattr(triton_module, "FORWARD_TILE_ELEMENTS", tile)
    monkeypatch.setattr(triton_module, "BACKWARD_TILE_ELEMENTS", tile)
    assert triton_module._launch_config(5, 4, tile) == (2, 4)
    assert_matches_reference(2, 37, 5, 4, 0.1)


def test_channel_block_groups_bound_the_B_and_C_partials(monkeypatch):
    """Three channel blocks in two groups: group 0 walks blocks 0 and 2, adding both into its
    partial dB, dC; the partial buffers are [groups, B, T, N], not [channel blocks, B, T, N]."""
    tile = triton_module.CHUNK_T * 2 * 4
    monkeypatch.setattr(triton_module, "FORWARD_TILE_ELEMENTS", tile)
    monkeypatch.setattr(triton_module, "BACKWARD_TILE_ELEMENTS", tile)
    monkeypatch.setattr(triton_module, "MAX_CHANNEL_GROUPS", 2)
    zero_shapes = []
    real_zeros = torch.zeros

    def recording_zeros(*shape, **kwargs):
        zero_shapes.append(tuple(shape))
        return real_zeros(*shape, **kwargs)

    monkeypatch.setattr(torch, "zeros", recording_zeros)
    assert_matches_reference(2, 37, 5, 4, 0.1)
    assert zero_shapes.count((2, 2, 37, 4)) == 2


def test_no_kernel_uses_a_reverse_associative_scan():
    """Reverse scans are written as flipped forward scans (see kernels/selective_scan/triton.py)."""
    import inspect

    import kernels.gru.triton
    import kernels.linear_scan.triton
    import kernels.lstm.triton

    for module in (triton_module, kernels.linear_scan.triton, kernels.lstm.triton, kernels.gru.triton):
        source = inspect.getsource(module)
        assert "reverse=" not in source.replace(" ", ""), module.__name__


@pytest.mark.slow
def test_long_sequence_matches_naive():
    assert_matches_reference(2, 1000, 4, 4, 0.01)


def test_reset_cuts_every_gradient_path_across_it():
    inputs, _, _, _ = random_inputs(1, 40, 4, 4, 0.0, device=KERNEL_DEVICE)
    reset = torch.zeros(1, 40, dtype=torch.bool, device=KERNEL_DEVICE)
    reset[0, 20] = True
    leaves = {name: value.float().requires_grad_() for name, value in inputs.items()}
    y, _ = selective_scan(**leaves, reset=reset, impl="triton")
    y[:, 20:].sum().backward()
    for name in ("u", "delta", "B", "C", "z"):
        assert torch.all(leaves[name].grad[:, :20] == 0), name
        assert leaves[name].grad[:, 20:].abs().max() > 1e-3, name
    assert torch.all(leaves["initial_state"].grad == 0)


def test_auto_uses_a_torch_path_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(selective_scan_package, "_triton_module", lambda: pytest.fail("auto picked triton on CPU"))
    inputs, reset, _, _ = random_inputs(2, 10, 4, 4, 0.1)
    y, final_state = selective_scan(**inputs, reset=reset, impl="auto")
    y_naive, final_naive = selective_scan_naive(**inputs, reset=reset)
    torch.testing.assert_close(y, y_naive)
    torch.testing.assert_close(final_state, final_naive)


def test_rejects_float64():
    inputs, reset, _, _ = random_inputs(2, 3, 4, 4, 0.0)
    with pytest.raises(ValueError, match="supports dtypes"):
        selective_scan(**inputs, reset=reset, impl="triton")


def test_rejects_state_size_above_the_limit():
    inputs, reset, _, _ = random_inputs(1, 2, 2, triton_module.MAX_STATE_SIZE + 1, 0.0)
    inputs = {name: value.float() for name, value in inputs.items()}
    with pytest.raises(ValueError, match=f"state sizes N <= {triton_module.MAX_STATE_SIZE}, got 129"):
        selective_scan(**inputs, reset=reset, impl="triton")


def test_rejects_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs, reset, _, _ = random_inputs(2, 3, 4, 4, 0.0)
    inputs = {name: value.float() for name, value in inputs.items()}
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        selective_scan(**inputs, reset=reset, impl="triton")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize(
    "batch_size, length, channels, state_size",
    [(64, 128, 256, 16), (4, 8192, 256, 16), (8, 512, 128, 64)],
    ids=["B64-T128-D256-N16", "B4-T8192-D256-N16", "B8-T512-D128-N64"],
)
def test_cuda_realistic_shapes(batch_size, length, channels, state_size):
    assert_matches_reference(batch_size, length, channels, state_size, 0.01, device="cuda")


@pytest.mark.cuda
@requires_cuda
def test_auto_uses_triton_for_float32_cuda_tensors(monkeypatch):
    calls = []
    original = triton_module.selective_scan_triton

    def counting_triton(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(triton_module, "selective_scan_triton", counting_triton)
    inputs, reset, _, _ = random_inputs(2, 10, 4, 4, 0.1, device="cuda")
    selective_scan(**{name: value.float() for name, value in inputs.items()}, reset=reset)
    assert calls == [(2, 10, 4)]

"""Every backbone in float32 on a device against itself in float64 on the CPU: the outputs, the final
state, and the gradient of every parameter, of the input and of every floating initial-state entry,
over a long sequence with random resets and a carried initial state.

On CUDA (`cuda` marker, production width, T = 512) this is what makes the fused kernels' backbones
trustworthy: LSTM/GRU run the fused Triton recurrences, S4/S5 the linear scan, Mamba the selective
scan. The same comparison runs in CI on the CPU at a small width and T = 40, so its logic is
exercised on every machine.
"""

from __future__ import annotations

import copy

import pytest
import torch

from memory import BACKBONES, make_backbone

NAMES = sorted(BACKBONES)
INPUT_DIM = 6
# Largest allowed ||float32 - float64|| / ||float64|| per compared tensor. float32 rounding over a
# few hundred steps stays near 1e-6 (measured on the CPU at T = 40); 1e-3 leaves a wide margin
# while catching any wrong index, missing term or dropped reset (errors of order 1).
RELATIVE_TOLERANCE = 1e-3

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def differentiable(value: torch.Tensor) -> bool:
    return value.is_floating_point() or value.is_complex()


def cast(value: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """`value` on `device` at `dtype` (complex tensors at its complex counterpart; others as they are)."""
    if value.is_complex():
        return value.to(device, COMPLEX[dtype])
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The real inner product sum(a * b), complex tensors as (real, imaginary) pairs."""
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    return (a * b).sum()


def problem(name: str, hidden_dim: int, batch_size: int, length: int, seed: int = 0):
    """A float64 CPU backbone, inputs, resets (rate 0.05, plus a reset at step 0 of row 0), a
    carried initial state (a few steps from zeros) and random upstream gradients."""
    torch.manual_seed(seed)
    backbone = make_backbone(name, INPUT_DIM, hidden_dim).double()
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, length, INPUT_DIM, generator=generator, dtype=torch.float64)
    reset = torch.rand(batch_size, length, generator=generator) < 0.05
    reset[0, 0] = True
    warmup = torch.randn(batch_size, 3, INPUT_DIM, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        _, state = backbone(warmup, backbone.initial_state(batch_size), torch.zeros(batch_size, 3, dtype=torch.bool))
    upstream_y = torch.randn(batch_size, length, hidden_dim, generator=generator, dtype=torch.float64)
    upstream_state = {
        key: torch.randn(value.shape, generator=generator, dtype=value.dtype)
        for key, value in state.items() if differentiable(value)
    }
    return backbone, x, reset, state, upstream_y, upstream_state


def forward_and_gradients(backbone, x, reset, state, upstream_y, upstream_state, device, dtype) -> dict[str, torch.Tensor]:
    """Run `backbone` (a copy moved to device/dtype) forward and backward; every result on the CPU in float64."""
    model = copy.deepcopy(backbone).to(device=device, dtype=dtype)
    x = x.to(device, dtype).requires_grad_()
    state = {
        key: cast(value, device, dtype).requires_grad_() if differentiable(value) else cast(value, device, dtype)
        for key, value in state.items()
    }
    y, final = model(x, state, reset.to(device))
    loss = inner(y, upstream_y.to(device, dtype))
    loss = loss + sum(inner(final[key], cast(grad, device, dtype)) for key, grad in upstream_state.items())
    floating_state = {f"grad_state.{key}": value for key, value in state.items() if differentiable(value)}
    parameters = {f"grad_{key}": value for key, value in model.named_parameters()}
    leaves = {"grad_x": x, **floating_state, **parameters}
    gradients = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    results = {"y": y, **{f"final.{key}": value for key, value in final.items()}}
    for name, leaf, gradient in zip(leaves, leaves.values(), gradients):
        results[name] = torch.zeros_like(leaf) if gradient is None else gradient
    return {name: cast(value.detach(), "cpu", torch.float64) for name, value in results.items()}


def parity_errors(name: str, device: str, hidden_dim: int, batch_size: int, length: int) -> dict[str, float]:
    """||float32 on device - float64 on the CPU|| / ||float64 on the CPU|| for every compared tensor."""
    backbone, *inputs = problem(name, hidden_dim, batch_size, length)
    got = forward_and_gradients(backbone, *inputs, device=device, dtype=torch.float32)
    expected = forward_and_gradients(backbone, *inputs, device="cpu", dtype=torch.float64)
    assert got.keys() == expected.keys()
    errors = {}
    for key, reference in expected.items():
        value = got[key]
        assert value.shape == reference.shape, key
        if not differentiable(reference):
            assert torch.equal(value, reference), key
            continue
        scale = reference.norm()
        errors[key] = float((value - reference).norm() / scale) if scale > 0 else float(value.norm())
    return errors


def assert_parity(name: str, device: str, hidden_dim: int, batch_size: int, length: int) -> None:
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    # float32 means float32 here: TF32 matmuls/convolutions would be a 1e-3-level error of their own.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        errors = parity_errors(name, device, hidden_dim, batch_size, length)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    assert len(errors) >= 3
    failing = {key: error for key, error in errors.items() if not error <= RELATIVE_TOLERANCE}
    assert not failing, f"{name} on {device}: relative errors above {RELATIVE_TOLERANCE}: {failing}"


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64_on_the_cpu(name):
    assert_parity(name, "cpu", hidden_dim=16, batch_size=3, length=40)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_float32_matches_cpu_float64(name):
    assert_parity(name, "cuda", hidden_dim=128, batch_size=16, length=512)

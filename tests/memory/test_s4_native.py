"""S4's native CPU paths against its PyTorch ones: the episode-masked convolution (forward and gradients)
and the rollout step."""

from __future__ import annotations

import pytest
import torch

import memory.s4 as s4
from kernels.native import unavailable_reason
from memory import make_backbone

pytestmark = pytest.mark.skipif(unavailable_reason("s4") is not None, reason=str(unavailable_reason("s4")))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("batch", "length", "channels", "reset_probability"),
                         [(3, 17, 5, 0.2), (2, 1, 3, 0.0), (4, 64, 7, 0.05), (3, 30, 9, 1.0), (1, 23, 1, 0.0)])
def test_native_convolution_matches_the_lag_loop(batch, length, channels, reset_probability, dtype):
    generator = torch.Generator().manual_seed(length)
    u = torch.randn(batch, length, channels, generator=generator, dtype=dtype, requires_grad=True)
    kernel = torch.randn(length, channels, generator=generator, dtype=dtype, requires_grad=True)
    reset = torch.rand(batch, length, generator=generator) < reset_probability
    upstream = torch.randn(batch, length, channels, generator=generator, dtype=dtype)
    results = {}
    for impl in ("torch", "native"):
        y = s4.episode_masked_convolution(u, kernel, reset, impl=impl)
        results[impl] = (y, *torch.autograd.grad(y, (u, kernel), upstream))
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for name, native, reference in zip(("y", "grad u", "grad kernel"), results["native"], results["torch"]):
        torch.testing.assert_close(native, reference, **tolerance, msg=name)


def test_native_convolution_refuses_what_it_cannot_run():
    u, kernel = torch.randn(1, 3, 2, dtype=torch.float16), torch.randn(3, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="impl='native' takes float32 or float64 CPU tensors, got torch.float16 on cpu"):
        s4.episode_masked_convolution(u, kernel, torch.zeros(1, 3, dtype=torch.bool), impl="native")
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'native', 'torch'\)"):
        s4.episode_masked_convolution(u, kernel, torch.zeros(1, 3, dtype=torch.bool), impl="c")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_native_step_matches_the_torch_step(dtype, monkeypatch):
    torch.manual_seed(0)
    backbone = make_backbone("s4", input_dim=6, hidden_dim=8, state_size=6).to(dtype)
    state = {name: torch.randn_like(value) for name, value in backbone.initial_state(5).items()}
    x = torch.randn(5, 6, dtype=dtype)
    reset = torch.tensor([True, False, False, True, False])
    with torch.no_grad():
        y_native, state_native = backbone.step(x, state, reset)
        monkeypatch.setattr(s4, "_native_step_fits", lambda *args: False)
        y_torch, state_torch = backbone.step(x, state, reset)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y_native, y_torch, **tolerance)
    torch.testing.assert_close(state_native["ssm"], state_torch["ssm"], **tolerance)


def test_a_step_that_needs_gradients_takes_the_torch_path():
    backbone = make_backbone("s4", input_dim=4, hidden_dim=8, state_size=4)
    assert not s4._native_step_fits(torch.randn(2, 8), backbone.mixers[0].D)  # grad mode is on here
    y, _ = backbone.step(torch.randn(2, 4), backbone.initial_state(2), torch.zeros(2, dtype=torch.bool))
    y.sum().backward()
    assert backbone.mixers[0].log_step.grad is not None

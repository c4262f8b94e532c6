"""The backbones' native CPU paths against their PyTorch ones: S4's episode-masked convolution and the
same-episode depthwise conv of Mamba, Mamba-2 and Gated DeltaNet (forward and gradients), S4's and Mamba's rollout
steps (Mamba's whole block step is one C++ loop). (The selective scan itself:
tests/kernels/test_selective_scan_reference.py.)"""

from __future__ import annotations

import pytest
import torch

import memory.mamba as mamba
import memory.s4 as s4
from kernels.native import unavailable_reason
from memory import make_backbone

LIBRARIES = ("s4", "mamba", "depthwise_conv")
pytestmark = pytest.mark.skipif(
    any(unavailable_reason(name) is not None for name in LIBRARIES),
    reason=" ".join(str(unavailable_reason(name)) for name in LIBRARIES if unavailable_reason(name) is not None),
)


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
    refusal = "impl='native' takes float32 or float64 CPU tensors of one dtype, got torch.float16 on cpu"
    with pytest.raises(ValueError, match=refusal):
        s4.episode_masked_convolution(u, kernel, torch.zeros(1, 3, dtype=torch.bool), impl="native")
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'native', 'torch'\)"):
        s4.episode_masked_convolution(u, kernel, torch.zeros(1, 3, dtype=torch.bool), impl="c")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("silu", [False, True], ids=["linear", "silu"])
@pytest.mark.parametrize(("batch", "length", "channels", "kernel", "reset_probability"), [
    (3, 17, 5, 4, 0.2), (2, 1, 3, 4, 0.0), (2, 2, 3, 4, 0.5), (4, 64, 7, 4, 0.05), (3, 30, 9, 4, 1.0),
    (2, 9, 6, 1, 0.1), (2, 5, 3, 2, 0.3),
])
def test_native_same_episode_conv_matches_the_torch_path(batch, length, channels, kernel, reset_probability, silu,
                                                         dtype):
    """Outputs and every gradient (x, carried conv state, weight, bias; upstream on both outputs), x given as a
    strided slice of a wider projection as the backbones pass it."""
    generator = torch.Generator().manual_seed(length * kernel)
    projection = torch.randn(batch, length, 2 * channels, generator=generator, dtype=dtype, requires_grad=True)
    conv_state = torch.randn(batch, kernel - 1, channels, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(channels, kernel, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(channels, generator=generator, dtype=dtype, requires_grad=True)
    reset = torch.rand(batch, length, generator=generator) < reset_probability
    upstream = (torch.randn(batch, length, channels, generator=generator, dtype=dtype),
                torch.randn(batch, kernel - 1, channels, generator=generator, dtype=dtype))
    results = {}
    for impl in ("torch", "native"):
        x = projection[..., channels:]
        output, next_state = mamba.same_episode_conv(x, conv_state, reset, weight, bias, silu=silu, impl=impl)
        gradients = torch.autograd.grad((output, next_state), (projection, conv_state, weight, bias), upstream)
        results[impl] = (output, next_state, *gradients)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    names = ("output", "next state", "grad x", "grad conv state", "grad weight", "grad bias")
    for name, native, reference in zip(names, results["native"], results["torch"]):
        torch.testing.assert_close(native, reference, **tolerance, msg=name)


def test_native_same_episode_conv_reads_inputs_of_any_layout():
    """A one-step window whose size-1 time dimension carries an arbitrary stride, and a transposed x."""
    weight, bias = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    conv_state = torch.randn(2, 2, 4, dtype=torch.float64)
    odd_stride = torch.randn(2, 4, dtype=torch.float64).as_strided((2, 1, 4), (4, 7, 1))
    transposed = torch.randn(2, 4, 5, dtype=torch.float64).transpose(1, 2)
    for x in (odd_stride, transposed):
        reset = torch.zeros(x.shape[:2], dtype=torch.bool)
        native = mamba.same_episode_conv(x, conv_state, reset, weight, bias, silu=True, impl="native")
        reference = mamba.same_episode_conv(x, conv_state, reset, weight, bias, silu=True, impl="torch")
        for got, expected in zip(native, reference):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_native_same_episode_conv_without_an_upstream_gradient_on_its_output():
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    conv_state, weight, bias = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(3, 4), torch.randn(3)
    reset = torch.tensor([[False, False, True, False, False, False]] * 2)
    gradients = {}
    for impl in ("torch", "native"):
        _, next_state = mamba.same_episode_conv(x, conv_state, reset, weight.double(), bias.double(), impl=impl)
        gradients[impl] = torch.autograd.grad(next_state.sum(), x)[0]
    torch.testing.assert_close(gradients["native"], gradients["torch"], rtol=1e-12, atol=1e-12)
    assert gradients["native"][:, :3].abs().sum() == 0  # only the last 3 inputs are carried


def test_native_same_episode_conv_refuses_what_it_cannot_run():
    x, conv_state = torch.randn(1, 3, 2), torch.randn(1, 3, 2, dtype=torch.float64)
    weight, bias, reset = torch.randn(2, 4), torch.randn(2), torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="impl='native' takes float32 or float64 CPU tensors of one dtype"):
        mamba.same_episode_conv(x, conv_state, reset, weight, bias, impl="native")
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'native', 'torch'\)"):
        mamba.same_episode_conv(x, conv_state.float(), reset, weight, bias, impl="triton")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("module", "options"), [
    (s4, {}), (mamba, {}), (mamba, {"conv_kernel": 1, "dt_rank": 3, "expand": 1}), (mamba, {"conv_kernel": 2}),
], ids=["s4", "mamba", "mamba-no-conv-window", "mamba-conv-2"])
def test_native_step_matches_the_torch_step(module, options, dtype, monkeypatch):
    torch.manual_seed(0)
    backbone = make_backbone(module.__name__.split(".")[-1], input_dim=6, hidden_dim=8, state_size=6, **options)
    backbone = backbone.to(dtype)
    state = {name: torch.randn_like(value) for name, value in backbone.initial_state(5).items()}
    x = torch.randn(5, 6, dtype=dtype)
    reset = torch.tensor([True, False, False, True, False])
    with torch.no_grad():
        y_native, state_native = backbone.step(x, state, reset)
        monkeypatch.setattr(module, "_native_step_fits", lambda *args: False)
        y_torch, state_torch = backbone.step(x, state, reset)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y_native, y_torch, **tolerance)
    assert state_native.keys() == state_torch.keys()
    for name in state_native:
        torch.testing.assert_close(state_native[name], state_torch[name], **tolerance, msg=name)


@pytest.mark.parametrize("name", ["s4", "mamba"])
def test_a_step_that_needs_gradients_takes_the_torch_path(name):
    backbone = make_backbone(name, input_dim=4, hidden_dim=8, state_size=4)
    y, _ = backbone.step(torch.randn(2, 4), backbone.initial_state(2), torch.zeros(2, dtype=torch.bool))
    y.sum().backward()
    assert all(parameter.grad is not None for parameter in backbone.mixers[0].parameters())


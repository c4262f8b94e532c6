"""selective_scan: the log-depth "parallel" path, the CPU's "sequential" loop (hand-written backward) and
its "native" C++ loop against the Python-loop reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch

import kernels.selective_scan as selective_scan_package
from kernels.native import unavailable_reason
from kernels.selective_scan import native, selective_scan, selective_scan_naive

NATIVE = pytest.param("native", marks=pytest.mark.skipif(not native.available(),
                                                       reason=str(unavailable_reason("selective_scan"))))

BATCH, CHANNELS, STATE = 2, 5, 3
TIME_INPUTS = ("u", "delta", "B", "C", "z")


def random_inputs(length: int, reset_probability: float, dtype=torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    inputs = {
        "u": randn(BATCH, length, CHANNELS),
        "delta": torch.nn.functional.softplus(randn(BATCH, length, CHANNELS)),
        "A": -torch.exp(randn(CHANNELS, STATE) * 0.5),
        "B": randn(BATCH, length, STATE),
        "C": randn(BATCH, length, STATE),
        "D": randn(CHANNELS),
        "z": randn(BATCH, length, CHANNELS),
        "initial_state": randn(BATCH, CHANNELS, STATE),
    }
    reset = torch.rand(BATCH, length, generator=generator) < reset_probability
    return inputs, reset


def time_slice(inputs: dict, steps: slice) -> dict:
    return {name: value[:, steps] if name in TIME_INPUTS else value for name, value in inputs.items()}


def run(impl: str, inputs: dict, reset: torch.Tensor, upstream: torch.Tensor, upstream_final: torch.Tensor):
    """Outputs and the gradient of every input for one implementation, from fresh leaf copies."""
    leaves = {name: value.clone().requires_grad_(True) for name, value in inputs.items()}
    y, final = selective_scan(**leaves, reset=reset, impl=impl)
    ((y * upstream).sum() + (final * upstream_final).sum()).backward()
    return y.detach(), final.detach(), {name: leaf.grad for name, leaf in leaves.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reset_probability", [0.0, 0.1, 0.5], ids=lambda p: f"reset{p}")
@pytest.mark.parametrize("length", [1, 63, 100], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("impl", ["parallel", "sequential", NATIVE])
def test_torch_paths_match_naive_forward_and_gradients(impl, length, reset_probability, dtype):
    inputs, reset = random_inputs(length, reset_probability, dtype)
    upstream = torch.randn(BATCH, length, CHANNELS, dtype=dtype)
    upstream_final = torch.randn(BATCH, CHANNELS, STATE, dtype=dtype)
    y_naive, final_naive, grads_naive = run("naive", inputs, reset, upstream, upstream_final)
    y_torch, final_torch, grads_torch = run(impl, inputs, reset, upstream, upstream_final)
    tolerance = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(y_torch, y_naive, **tolerance)
    torch.testing.assert_close(final_torch, final_naive, **tolerance)
    for name in inputs:
        assert grads_naive[name] is not None and grads_torch[name] is not None, name
        torch.testing.assert_close(grads_torch[name], grads_naive[name], **tolerance, msg=name)


@pytest.mark.parametrize("impl", ["sequential", NATIVE])
def test_gradients_without_an_upstream_final_state_gradient(impl):
    """The usual training case: only y is used, so the final state's gradient arrives as None."""
    inputs, reset = random_inputs(20, 0.2)
    upstream = torch.randn(BATCH, 20, CHANNELS, dtype=torch.float64)
    grads = {}
    for name in ("naive", impl):
        leaves = {key: value.clone().requires_grad_(True) for key, value in inputs.items()}
        y, _ = selective_scan(**leaves, reset=reset, impl=name)
        (y * upstream).sum().backward()
        grads[name] = {key: leaf.grad for key, leaf in leaves.items()}
    for name in inputs:
        torch.testing.assert_close(grads[impl][name], grads["naive"][name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize(("channels", "state"), [(1, 1), (1, 4), (6, 1)])
def test_sequential_matches_naive_with_one_channel_or_one_state(channels, state):
    """Size-1 dimensions make transposed views contiguous: the in-place backward must still not touch its inputs."""
    generator = torch.Generator().manual_seed(channels * 10 + state)
    length = 9
    inputs = {
        "u": torch.randn(1, length, channels, generator=generator, dtype=torch.float64),
        "delta": torch.rand(1, length, channels, generator=generator, dtype=torch.float64),
        "A": -torch.rand(channels, state, generator=generator, dtype=torch.float64) - 0.1,
        "B": torch.randn(1, length, state, generator=generator, dtype=torch.float64),
        "C": torch.randn(1, length, state, generator=generator, dtype=torch.float64),
        "initial_state": torch.randn(1, channels, state, generator=generator, dtype=torch.float64),
    }
    reset = torch.zeros(1, length, dtype=torch.bool)
    reset[0, 4] = True
    upstream = torch.randn(1, length, channels, generator=generator, dtype=torch.float64)
    upstream_final = torch.randn(1, channels, state, generator=generator, dtype=torch.float64)
    kept_final = upstream_final.clone()
    y_naive, final_naive, grads_naive = run("naive", inputs, reset, upstream, upstream_final)
    leaves = {name: value.clone().requires_grad_(True) for name, value in inputs.items()}
    y_sequential, final_sequential = selective_scan(**leaves, reset=reset, impl="sequential")
    # The upstream gradients handed straight to backward, as autograd passes them on.
    torch.autograd.backward([y_sequential, final_sequential], [upstream, upstream_final])
    grads_sequential = {name: leaf.grad for name, leaf in leaves.items()}
    assert torch.equal(upstream_final, kept_final)
    torch.testing.assert_close(y_sequential.detach(), y_naive, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final_sequential.detach(), final_naive, rtol=1e-10, atol=1e-10)
    for name in inputs:
        torch.testing.assert_close(grads_sequential[name], grads_naive[name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("native_builds", [True, False], ids=["native-builds", "no-native"])
def test_auto_on_cpu_is_the_native_path_where_it_builds_else_the_sequential_one(native_builds, monkeypatch):
    if native_builds and not native.available():
        pytest.skip(str(unavailable_reason("selective_scan")))
    monkeypatch.setattr(native, "available", lambda: native_builds)
    inputs, reset = random_inputs(17, 0.2)
    y_auto, final_auto = selective_scan(**inputs, reset=reset)
    expected = "native" if native_builds else "sequential"
    y_expected, final_expected = selective_scan(**inputs, reset=reset, impl=expected)
    assert torch.equal(y_auto, y_expected) and torch.equal(final_auto, final_expected)


def test_native_refuses_what_it_cannot_run(monkeypatch):
    inputs, reset = random_inputs(5, 0.2)
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(selective_scan_package, "unavailable_reason", lambda name: "no C++ compiler found")
    with pytest.raises(ValueError, match="impl='native': no C\\+\\+ compiler found"):
        selective_scan(**inputs, reset=reset, impl="native")


def test_naive_matches_a_hand_written_two_step_recurrence():
    inputs, _ = random_inputs(2, 0.0)
    u, delta, A, B, C, D, z, h0 = (inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "initial_state"))
    reset = torch.tensor([[False, False], [False, True]])
    h1 = torch.exp(delta[:, 0, :, None] * A) * h0 + (delta[:, 0] * u[:, 0])[..., None] * B[:, 0, None]
    carried = torch.stack([h1[0], torch.zeros_like(h1[1])])
    h2 = torch.exp(delta[:, 1, :, None] * A) * carried + (delta[:, 1] * u[:, 1])[..., None] * B[:, 1, None]
    y = torch.stack([(h1 * C[:, 0, None]).sum(-1), (h2 * C[:, 1, None]).sum(-1)], dim=1)
    y = (y + D * u) * torch.nn.functional.silu(z)
    y_naive, final = selective_scan_naive(u, delta, A, B, C, D, z, reset, h0)
    torch.testing.assert_close(y_naive, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, h2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["naive", "parallel", "sequential", NATIVE])
def test_reset_forgets_the_past_and_blocks_its_gradient(impl):
    inputs, _ = random_inputs(12, 0.0)
    reset = torch.zeros(BATCH, 12, dtype=torch.bool)
    reset[:, 5] = True
    leaves = {name: value.clone().requires_grad_(True) for name, value in inputs.items()}
    y, _ = selective_scan(**leaves, reset=reset, impl=impl)
    y[:, 5:].sum().backward()
    for name in TIME_INPUTS:
        assert torch.count_nonzero(leaves[name].grad[:, :5]) == 0, name
        assert leaves[name].grad[:, 5:].abs().max() > 1e-6, name  # a magnitude: rounding noise is non-zero too
    assert torch.count_nonzero(leaves["initial_state"].grad) == 0
    fresh, _ = selective_scan(**time_slice(inputs, slice(5, None)), reset=reset[:, 5:], impl=impl)
    torch.testing.assert_close(y[:, 5:].detach(), fresh, rtol=1e-12, atol=1e-12)


def test_optional_inputs_default_to_no_skip_no_gate_no_reset_zero_state():
    inputs, _ = random_inputs(9, 0.0)
    core = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    y, final = selective_scan(**core)
    no_reset = torch.zeros(BATCH, 9, dtype=torch.bool)
    zero_state = torch.zeros(BATCH, CHANNELS, STATE, dtype=torch.float64)
    y_explicit, final_explicit = selective_scan_naive(**core, reset=no_reset, initial_state=zero_state)
    torch.testing.assert_close(y, y_explicit, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, final_explicit, rtol=1e-12, atol=1e-12)


F64 = {"dtype": torch.float64}
BAD_INPUTS = {
    "u": (torch.zeros(BATCH, 4, CHANNELS, dtype=torch.int64), r"u must be a float32 or float64 tensor \[B, T, D\]"),
    "delta": (torch.ones(BATCH, 4, CHANNELS + 1, **F64), r"delta must be .* \[B, T, D\] = \(2, 4, 5\)"),
    "A": (torch.ones(CHANNELS, **F64), r"A must be .* \[D, N\] = \(5, N\)"),
    "B": (torch.ones(BATCH, 4, STATE + 1, **F64), r"B must be .* \[B, T, N\] = \(2, 4, 3\)"),
    "C": (torch.ones(BATCH, 4, STATE, dtype=torch.float32), r"C must be torch.float64 \[B, T, N\]"),
    "D": (torch.ones(CHANNELS + 1, **F64), r"D must be .* \[D\] = \(5\)"),
    "z": (torch.ones(BATCH, 3, CHANNELS, **F64), r"z must be .* \[B, T, D\] = \(2, 4, 5\)"),
    "reset": (torch.zeros(BATCH, 4), r"reset must be torch.bool \[B, T\] = \(2, 4\), got torch.float32"),
    "initial_state": (
        torch.zeros(BATCH, STATE, CHANNELS, **F64), r"initial_state must be .* \[B, D, N\] = \(2, 5, 3\)"
    ),
    "impl": ("triton-ish", r"impl must be one of \('auto', 'naive', 'native', 'parallel', 'sequential', 'triton'\)"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_inputs_raise_one_clear_sentence(name):
    value, message = BAD_INPUTS[name]
    inputs, reset = random_inputs(4, 0.2)
    with pytest.raises(ValueError, match=message):
        selective_scan(**{**inputs, "reset": reset, name: value})


def test_empty_sequence_is_rejected():
    inputs, _ = random_inputs(1, 0.0)
    with pytest.raises(ValueError, match="at least one time step"):
        selective_scan(**time_slice(inputs, slice(0, 0)))

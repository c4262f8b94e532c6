"""The fused Triton LSTM against the loop reference: outputs, final state and every gradient.

The Triton cases run on KERNEL_DEVICE (CUDA when present, else the CPU under TRITON_INTERPRET=1,
set by tests/conftest.py), so shapes are small. The reference runs in float64 on the CPU on the
same values; both sides get the same random
upstream gradients on h_seq, h_T and c_T.
"""

from __future__ import annotations

import pytest
import torch

import kernels.lstm as lstm_package
import kernels.gru.triton as gru_triton
import kernels.lstm.triton as lstm_triton
from kernels.lstm import lstm_sequence, lstm_sequence_naive
from kernels.lstm import fused_kernel_applies
from tests.kernels.device import KERNEL_DEVICE

TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
}
# The Triton 3.9 interpreter multiplies bfloat16 tl.dot operands as raw bits (a 16x16 product
# comes out ~1e10 off); GPUs compute them correctly, so bfloat16 runs only there.
BFLOAT16_DOT_WORKS = torch.cuda.is_available()
NAMES = ("h_seq", "h_final", "c_final", "grad_x_proj", "grad_weight_hh", "grad_bias", "grad_h0", "grad_c0")


def random_problem(batch_size, length, hidden_size, reset_probability, device="cpu", seed=0):
    """Inputs, resets (batch row 0 always starts with one) and upstream gradients, in float64."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape, scale=1.0):
        return scale * torch.randn(shape, generator=generator, dtype=torch.float64)

    inputs = dict(
        x_proj=normal(batch_size, length, 4 * hidden_size),
        weight_hh=normal(4 * hidden_size, hidden_size, scale=hidden_size**-0.5),
        bias=normal(4 * hidden_size, scale=0.5),
        h0=normal(batch_size, hidden_size, scale=0.5),
        c0=normal(batch_size, hidden_size),
    )
    reset = torch.rand(batch_size, length, generator=generator) < reset_probability
    if reset_probability > 0:
        reset[0, 0] = True
    upstream = (normal(batch_size, length, hidden_size), normal(batch_size, hidden_size), normal(batch_size, hidden_size))
    inputs = {key: value.to(device) for key, value in inputs.items()}
    return inputs, reset.to(device), tuple(grad.to(device) for grad in upstream)


def run_with_grads(inputs, reset, upstream, impl, dtype, with_bias):
    leaves = {key: value.to(dtype).requires_grad_() for key, value in inputs.items() if with_bias or key != "bias"}
    h_seq, (h_final, c_final) = lstm_sequence(
        leaves["x_proj"], leaves["weight_hh"], leaves.get("bias"), reset, (leaves["h0"], leaves["c0"]), impl=impl
    )
    grads = torch.autograd.grad((h_seq, h_final, c_final), list(leaves.values()), [grad.to(dtype) for grad in upstream])
    grads = dict(zip(leaves, grads))
    return {
        "h_seq": h_seq, "h_final": h_final, "c_final": c_final,
        **{f"grad_{key}": grads.get(key) for key in ("x_proj", "weight_hh", "bias", "h0", "c0")},
    }


def assert_matches_reference(
    batch_size, length, hidden_size, reset_probability, with_bias=True, dtype=torch.float32, device=KERNEL_DEVICE,
    tolerance=None,
):
    """The Triton kernel on `device` against the naive loop in float64 on the CPU."""
    inputs, reset, upstream = random_problem(batch_size, length, hidden_size, reset_probability)
    on_device = {key: value.to(device) for key, value in inputs.items()}
    got = run_with_grads(on_device, reset.to(device), tuple(grad.to(device) for grad in upstream), "triton", dtype, with_bias)
    expected = run_with_grads(inputs, reset, upstream, "naive", torch.float64, with_bias)
    for name in NAMES:
        if not with_bias and name == "grad_bias":
            continue
        assert got[name].dtype == dtype, name
        torch.testing.assert_close(
            got[name].detach().cpu(), expected[name].detach().to(dtype), **(tolerance or TOLERANCES[dtype]), msg=lambda text: f"{name}: {text}"
        )


CASES = [
    pytest.param(*case, id=f"B{case[0]}-T{case[1]}-H{case[2]}-reset{case[3]}-{'bias' if case[4] else 'nobias'}")
    for case in (
        (3, 1, 16, 0.1, True),
        (3, 63, 16, 0.1, True),
        (3, 100, 16, 0.1, False),
        (18, 20, 20, 0.2, True),
        (2, 30, 32, 1.0, True),
    )
]


@pytest.mark.parametrize("batch_size, length, hidden_size, reset_probability, with_bias", CASES)
def test_triton_matches_naive(batch_size, length, hidden_size, reset_probability, with_bias):
    assert_matches_reference(batch_size, length, hidden_size, reset_probability, with_bias)


def test_streamed_weights_match_naive(monkeypatch):
    monkeypatch.setattr(lstm_triton, "RESIDENT_WEIGHT_BYTES", 0)
    # H = 40 streams three BLOCK_K = 16 slices, the last one partly masked.
    assert_matches_reference(3, 30, 40, 0.1)


@pytest.mark.parametrize(
    "forward_max, backward_max, with_bias, dtype",
    [(0, 0, True, torch.float32), (128, 0, False, torch.float32), (0, 128, True, torch.float16)],
    ids=["split-both", "whole-forward-split-backward", "split-forward-whole-backward-float16"],
)
def test_split_step_kernels_match_naive(monkeypatch, forward_max, backward_max, with_bias, dtype):
    """The per-step launches (split over blocks of hidden units) forced at a small H, alone and
    beside the whole-sequence kernel of the other direction: H = 40 is two BLOCK_U = 32 unit
    blocks (the second partly masked), B = 18 two row blocks, T odd, resets at random."""
    monkeypatch.setitem(lstm_triton.WHOLE_SEQUENCE_MAX_HIDDEN, "forward", forward_max)
    monkeypatch.setitem(lstm_triton.WHOLE_SEQUENCE_MAX_HIDDEN, "backward", backward_max)
    assert_matches_reference(18, 5, 40, 0.3, with_bias=with_bias, dtype=dtype)


def test_hidden_size_beyond_the_whole_sequence_kernels_matches_naive():
    """H = 144 (not a multiple of the 32-unit block) takes the per-step launches by default."""
    assert not lstm_triton.whole_sequence(144, "forward") and not lstm_triton.whole_sequence(144, "backward")
    assert_matches_reference(2, 3, 144, 0.4)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not BFLOAT16_DOT_WORKS, reason="interpreter bfloat16 dot is wrong")),
    ],
    ids=["float16", "bfloat16"],
)
def test_half_precision_matches_naive_at_loose_tolerance(dtype):
    assert_matches_reference(3, 40, 16, 0.1, dtype=dtype)


@pytest.mark.slow
def test_long_sequence_matches_naive():
    assert_matches_reference(3, 1000, 16, 0.01)


def test_naive_matches_torch_lstm_and_restarts_at_a_reset():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 8, batch_first=True).double()
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    x_proj = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0
    reset = torch.zeros(2, 12, dtype=torch.bool)
    reset[1, 7] = True
    zeros = torch.zeros(2, 8, dtype=torch.float64)
    with torch.no_grad():
        h_seq, (h_final, c_final) = lstm_sequence_naive(x_proj, lstm.weight_hh_l0, lstm.bias_hh_l0, reset, (zeros, zeros))
        expected, (expected_h, expected_c) = lstm(x)
        restarted, _ = lstm(x[1:, 7:])
    torch.testing.assert_close(h_seq[0], expected[0])
    torch.testing.assert_close(h_final[0], expected_h[0, 0])
    torch.testing.assert_close(c_final[0], expected_c[0, 0])
    torch.testing.assert_close(h_seq[1, :7], expected[1, :7])
    torch.testing.assert_close(h_seq[1, 7:], restarted[0])


def test_auto_uses_naive_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(lstm_package, "_triton_module", lambda: pytest.fail("auto picked triton on CPU"))
    inputs, reset, _ = random_problem(2, 5, 16, 0.2)
    state = (inputs["h0"], inputs["c0"])
    h_seq, _ = lstm_sequence(inputs["x_proj"], inputs["weight_hh"], inputs["bias"], reset, state, impl="auto")
    expected, _ = lstm_sequence_naive(inputs["x_proj"], inputs["weight_hh"], inputs["bias"], reset, state)
    torch.testing.assert_close(h_seq, expected)


@pytest.mark.parametrize(
    "is_cuda, dtype, expected",
    [(True, torch.float32, True), (True, torch.float64, False), (False, torch.float32, False)],
    ids=["cuda-float32", "cuda-float64", "cpu"],
)
@pytest.mark.parametrize("op, triton_module", [("lstm", lstm_triton), ("gru", gru_triton)], ids=["lstm", "gru"])
def test_auto_dispatch_warns_when_cuda_falls_back_to_the_loop(op, triton_module, is_cuda, dtype, expected):
    """A CUDA call the fused kernel cannot take (a dtype it does not support; every hidden size is
    supported) runs the loop with a RuntimeWarning, never silently."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        applies = fused_kernel_applies(op, triton_module, is_cuda, dtype)
    assert applies is expected
    falls_back_on_cuda = is_cuda and not expected
    assert [str(warning.message) for warning in caught if warning.category is RuntimeWarning] == (
        [f"{op}_sequence: dtype {dtype} is not one of {triton_module.SUPPORTED_DTYPES}, so impl='auto' runs the "
         "Python step loop on CUDA (one cell call per step)"]
        if falls_back_on_cuda else []
    )


def small_inputs(hidden_size=16, dtype=torch.float32):
    x_proj = torch.zeros(2, 3, 4 * hidden_size, dtype=dtype)
    return x_proj, torch.zeros(4 * hidden_size, hidden_size, dtype=dtype), torch.zeros(2, 3, dtype=torch.bool)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, w, r: (x[..., :-1], w, r), r"x_proj must be \[B, T, 4H\]"),
        (lambda x, w, r: (x, w[:, :-1], r), r"weight_hh must be \[4H, H\]"),
        (lambda x, w, r: (x, w, r.float()), r"reset must be bool \[B, T\]"),
        (lambda x, w, r: (x, w, r[:, :2]), r"reset must be bool \[B, T\]"),
        (lambda x, w, r: (x[:, :0], w, r[:, :0]), "at least one time step"),
        (lambda x, w, r: (x, w.double(), r), "must have the dtype of x_proj"),
    ],
    ids=["x_proj-width", "weight-shape", "reset-dtype", "reset-shape", "empty-sequence", "weight-dtype"],
)
def test_rejects_bad_input(change, message):
    x_proj, weight_hh, reset = change(*small_inputs())
    with pytest.raises(ValueError, match=message):
        lstm_sequence(x_proj, weight_hh, None, reset, impl="triton")


def test_rejects_bad_initial_state():
    x_proj, weight_hh, reset = small_inputs()
    with pytest.raises(ValueError, match=r"initial_state must be \(h, c\)"):
        lstm_sequence(x_proj, weight_hh, None, reset, (torch.zeros(2, 16), torch.zeros(2, 15)), impl="triton")


@pytest.mark.parametrize(
    "hidden_size, dtype, impl, message",
    [
        (16, torch.float64, "triton", "supports dtypes"),
        (16, torch.float32, "cudnn", "impl must be one of"),
    ],
    ids=["float64", "unknown-impl"],
)
def test_rejects_what_triton_cannot_run(hidden_size, dtype, impl, message):
    x_proj, weight_hh, reset = small_inputs(hidden_size, dtype)
    with pytest.raises(ValueError, match=message):
        lstm_sequence(x_proj, weight_hh, None, reset, impl=impl)


def test_rejects_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x_proj, weight_hh, reset = small_inputs()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        lstm_sequence(x_proj, weight_hh, None, reset, impl="triton")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("hidden_size", [64, 128, 512], ids=["H64", "H128", "H512"])
def test_cuda_realistic_shapes(hidden_size, dtype):
    # float32 dots run as tf32x3 and the weight gradient sums B*T = 32768 products: a looser bound.
    tolerance = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else None
    assert_matches_reference(256, 128, hidden_size, 0.01, dtype=dtype, device="cuda", tolerance=tolerance)

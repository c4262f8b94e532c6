"""Facts particular to the state-space backbones (s4, s5, mamba), beyond the shared contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import memory.mamba
import memory.s4
import memory.s5
from memory import make_backbone
from memory.s5 import hippo_n_eigenbasis

INPUT_DIM, HIDDEN_DIM = 3, 8


def build(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_backbone(name, INPUT_DIM, HIDDEN_DIM, **options).double()


def no_reset(batch_size: int, length: int) -> torch.Tensor:
    return torch.zeros(batch_size, length, dtype=torch.bool)


# -- shared by all three -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s4", "s5", "mamba"])
def test_state_dtype_follows_the_parameters(name):
    torch.manual_seed(0)
    backbone = make_backbone(name, INPUT_DIM, HIDDEN_DIM)
    single, double = {"s4": (torch.complex64, torch.complex128), "s5": (torch.complex64, torch.complex128),
                      "mamba": (torch.float32, torch.float64)}[name]
    assert {value.dtype for value in backbone.initial_state(2).values()} == {single}
    backbone.double()
    assert {value.dtype for value in backbone.initial_state(2).values()} == {double}
    y, state = backbone(torch.randn(2, 5, INPUT_DIM, dtype=torch.float64), backbone.initial_state(2), no_reset(2, 5))
    assert y.dtype == torch.float64
    assert {value.dtype for value in state.values()} == {double}


SCANS = {"s4": (memory.s4, "linear_scan"), "s5": (memory.s5, "linear_scan"), "mamba": (memory.mamba, "selective_scan")}


@pytest.mark.parametrize("name", SCANS)
def test_forward_runs_one_scan_per_layer_not_a_loop_over_time(name, monkeypatch):
    module, scan = SCANS[name]
    calls = []
    original = getattr(module, scan)

    def counting_scan(*args, **kwargs):
        calls.append(args[1].shape[1])  # linear_scan's drive b / selective_scan's delta: [B, T, ...]
        return original(*args, **kwargs)

    monkeypatch.setattr(module, scan, counting_scan)
    backbone = build(name, num_layers=3, **({"mode": "scan"} if name == "s4" else {}))
    backbone(torch.randn(2, 40, INPUT_DIM, dtype=torch.float64), backbone.initial_state(2), no_reset(2, 40))
    assert calls == [40, 40, 40]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("s4", {"state_size": 7}, "state_size must be an even integer >= 2"),
        ("s4", {"init": "legs"}, r"init must be one of \('lin', 'inv'\), got 'legs'"),
        ("s4", {"num_layers": 0}, "num_layers must be a positive integer, got 0"),
        ("s4", {"mode": "fft"}, r"mode must be one of \('auto', 'scan', 'convolution'\), got 'fft'"),
        ("s5", {"state_size": 0}, "state_size must be an even integer >= 2"),
        ("s5", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min and dt_max must satisfy 0 < dt_min <= dt_max"),
        ("mamba", {"conv_kernel": 0}, "conv_kernel must be a positive integer, got 0"),
        ("mamba", {"expand": 1.5}, "expand must be a positive integer, got 1.5"),
    ],
)
def test_bad_options_raise_one_clear_sentence(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_backbone(name, INPUT_DIM, HIDDEN_DIM, **options)


# -- S4D --------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_init_is_stable_and_follows_its_formula(init):
    backbone = build("s4", init=init, state_size=16, dt_min=1e-3, dt_max=1e-1)
    n = torch.arange(8, dtype=torch.float64)
    expected_imag = math.pi * n if init == "lin" else 16 / math.pi * (16 / (2 * n + 1) - 1)
    for mixer in backbone.mixers:
        A_bar, _ = mixer.discretise()
        torch.testing.assert_close(-torch.exp(mixer.log_neg_real), torch.full_like(mixer.imag, -0.5))
        torch.testing.assert_close(mixer.imag, expected_imag.expand_as(mixer.imag), rtol=1e-6, atol=1e-6)
        assert bool((A_bar.abs() < 1).all())
        step = torch.exp(mixer.log_step)
        assert bool(((step >= 1e-3) & (step <= 1e-1)).all())


def test_s4d_recurrence_equals_its_convolution_kernel_restarted_at_resets():
    """S4D's convolutional view: y_t = sum_k K_k u_{t-k} + D u_t with K_k = 2 Re(C A_bar^k B_bar), per episode."""
    mixer = build("s4", state_size=8).mixers[0]
    length = 30
    u = torch.randn(1, length, HIDDEN_DIM, dtype=torch.float64)
    reset = no_reset(1, length)
    reset[0, 12] = True
    with torch.no_grad():
        y, _ = mixer.ssm(u, torch.zeros(1, HIDDEN_DIM, 4, dtype=torch.complex128), reset)
        A_bar, B_bar = mixer.discretise()
        C = torch.view_as_complex(mixer.C)
        powers = A_bar[None] ** torch.arange(length, dtype=torch.float64)[:, None, None]
        kernel = 2 * (C * powers * B_bar).sum(-1).real  # [lag, H]
        for start, stop in ((0, 12), (12, length)):
            for t in range(start, stop):
                lags = torch.arange(t - start + 1)
                expected = (kernel[lags] * u[0, t - lags]).sum(0) + mixer.D * u[0, t]
                torch.testing.assert_close(y[0, t], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 17, 40])
def test_s4d_convolution_mode_equals_the_scan_with_resets_initial_state_and_gradients(length):
    torch.manual_seed(length)
    x = torch.randn(3, length, INPUT_DIM, dtype=torch.float64)
    reset = torch.rand(3, length) < 0.2
    reset[1, 0] = True
    initial = {name: torch.randn_like(value) for name, value in build("s4", state_size=8).initial_state(3).items()}
    results = {}
    for mode in ("scan", "convolution"):
        backbone = build("s4", state_size=8, num_layers=2, mode=mode)
        inputs = x.clone().requires_grad_()
        state = {name: value.clone().requires_grad_() for name, value in initial.items()}
        y, final = backbone(inputs, state, reset)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum()
        loss = loss + sum((value.real ** 3 + value.imag).sum() for value in final.values())
        gradients = torch.autograd.grad(loss, [inputs, *state.values(), *backbone.parameters()])
        results[mode] = (y, final, gradients)
    (y_scan, final_scan, grads_scan), (y_conv, final_conv, grads_conv) = results.values()
    torch.testing.assert_close(y_conv, y_scan, rtol=1e-10, atol=1e-10)
    for name in final_scan:
        torch.testing.assert_close(final_conv[name], final_scan[name], rtol=1e-10, atol=1e-10)
    for grad_conv, grad_scan in zip(grads_conv, grads_scan):
        torch.testing.assert_close(grad_conv, grad_scan, rtol=1e-9, atol=1e-9)


def test_s4d_convolution_skips_lags_beyond_every_episode_and_still_equals_the_scan():
    """Episodes of at most 3 steps: only lags 1 and 2 reach inside an episode, the rest are skipped."""
    length = 23
    reset = no_reset(2, length)
    reset[:, ::3] = True
    reset[1, 1] = True  # a one-step episode
    assert len(memory.s4._same_episode_masks(reset, torch.float64)) == 2
    x = torch.randn(2, length, INPUT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    results = []
    for mode in ("scan", "convolution"):
        backbone = build("s4", state_size=8, mode=mode)
        inputs = x.clone().requires_grad_()
        y, _ = backbone(inputs, backbone.initial_state(2), reset)
        gradients = torch.autograd.grad((y * torch.cos(y)).sum(), [inputs, *backbone.parameters()])
        results.append((y, gradients))
    (y_scan, grads_scan), (y_conv, grads_conv) = results
    torch.testing.assert_close(y_conv, y_scan, rtol=1e-10, atol=1e-10)
    for grad_conv, grad_scan in zip(grads_conv, grads_scan):
        torch.testing.assert_close(grad_conv, grad_scan, rtol=1e-9, atol=1e-9)


def test_s4d_auto_mode_takes_the_convolution_on_the_cpu_at_any_length_elsewhere_up_to_the_state_size(monkeypatch):
    calls = []
    original = memory.s4.linear_scan
    monkeypatch.setattr(memory.s4, "linear_scan", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    backbone = build("s4", state_size=8, num_layers=1)
    for length in (8, 9, 40):
        backbone(torch.randn(2, length, INPUT_DIM, dtype=torch.float64), backbone.initial_state(2), no_reset(2, length))
    assert calls == []
    mixer = backbone.mixers[0]
    assert [mixer.uses_convolution(length, torch.device("cuda")) for length in (1, 8, 9)] == [True, True, False]
    assert mixer.uses_convolution(40, torch.device("cpu"))
    scan_only = build("s4", state_size=8, num_layers=1, mode="scan").mixers[0]
    convolution_only = build("s4", state_size=8, num_layers=1, mode="convolution").mixers[0]
    assert not scan_only.uses_convolution(2, torch.device("cpu"))
    assert convolution_only.uses_convolution(1000, torch.device("cuda"))


# -- S5 ---------------------------------------------------------------------------------------


def hippo_legs(size: int) -> torch.Tensor:
    """HiPPO-LegS: A_nk = -sqrt((2n+1)(2k+1)) below the diagonal, -(n+1) on it, 0 above."""
    n = torch.arange(size, dtype=torch.float64)
    full = -torch.sqrt((2 * n[:, None] + 1) * (2 * n[None, :] + 1))
    return torch.tril(full, diagonal=-1) - torch.diag(n + 1)


@pytest.mark.parametrize("size", [2, 8, 64])
def test_hippo_n_eigenbasis_rebuilds_the_normal_part_of_hippo_legs(size):
    """HiPPO-N = HiPPO-LegS + p p^T with p_n = sqrt(n + 1/2); the kept half and its conjugates diagonalise it."""
    eigenvalues, vectors = hippo_n_eigenbasis(size)
    p = torch.sqrt(torch.arange(size, dtype=torch.float64) + 0.5)
    hippo_n = hippo_legs(size) + p[:, None] * p[None, :]
    basis = torch.cat([vectors, vectors.conj()], dim=1)
    spectrum = torch.cat([eigenvalues, eigenvalues.conj()])
    torch.testing.assert_close(basis @ torch.diag(spectrum) @ basis.conj().T, hippo_n.cdouble(), rtol=1e-10, atol=1e-10)
    assert eigenvalues.shape == (size // 2,) and bool((eigenvalues.imag > 0).all())


def test_s5_layer_equals_the_real_system_it_diagonalises():
    """Conjugate symmetry: with one step size for all states, 2 Re(C x) over the P/2 stored complex states
    equals the real P-state system x' = A0 x + B0 u, y = C0 x + D u under zero-order hold, where
    A0 = V diag(Lambda) V^H over the stored eigenpairs and their conjugates, and B0, C0 are real."""
    size, step, length = 8, 0.05, 25
    mixer = build("s5", state_size=size).mixers[0]
    with torch.no_grad():
        mixer.log_step.fill_(math.log(step))
    _, vectors = hippo_n_eigenbasis(size)
    eigenvalues = torch.complex(-torch.exp(mixer.log_neg_real), mixer.imag).detach()
    basis = torch.cat([vectors, vectors.conj()], dim=1)
    system = basis @ torch.diag(torch.cat([eigenvalues, eigenvalues.conj()])) @ basis.conj().T
    assert system.imag.abs().max() < 1e-12
    B, C = torch.view_as_complex(mixer.B.detach()), torch.view_as_complex(mixer.C.detach())
    real_B, real_C = 2 * (vectors @ B).real, 2 * (C @ vectors.conj().T).real
    # B and C were built from real matrices, so these recover them exactly.
    torch.testing.assert_close(vectors.conj().T @ real_B.cdouble(), B, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(real_C.cdouble() @ vectors, C, rtol=1e-12, atol=1e-12)
    A_bar = torch.linalg.matrix_exp(step * system.real)
    B_bar = torch.linalg.solve(system.real, A_bar - torch.eye(size, dtype=torch.float64)) @ real_B
    u = torch.randn(2, length, HIDDEN_DIM, dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer.ssm(u, torch.zeros(2, size // 2, dtype=torch.complex128), no_reset(2, length))
    x = torch.zeros(2, size, dtype=torch.float64)
    for t in range(length):
        x = x @ A_bar.T + u[:, t] @ B_bar.T
        torch.testing.assert_close(y[:, t], x @ real_C.T + mixer.D.detach() * u[:, t], rtol=1e-9, atol=1e-9)


def test_s5_init_is_stable():
    for mixer in build("s5").mixers:
        eigenvalues_bar, _ = mixer.discretise()
        assert bool((eigenvalues_bar.abs() < 1).all())


# -- Mamba ------------------------------------------------------------------------------------


def reference_conv(mixer, x, conv_state, reset):
    """Per (b, t): sum_k w[:, k] * input at time t - (K-1) + k, zero if before the episode holding t."""
    kernel = mixer.conv_weight.shape[1]
    output = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            starts = [s for s in range(t + 1) if reset[b, s]]
            first_allowed = starts[-1] if starts else -(kernel - 1)
            for k in range(kernel):
                time = t - (kernel - 1) + k
                if time >= first_allowed:
                    value = x[b, time] if time >= 0 else conv_state[b, kernel - 1 + time]
                    output[b, t] += mixer.conv_weight[:, k] * value
            output[b, t] += mixer.conv_bias
    return output


def test_mamba_conv_matches_torch_conv1d_without_resets():
    mixer = build("mamba").mixers[0]
    inner_dim, kernel = mixer.conv_weight.shape
    x = torch.randn(2, 11, inner_dim, dtype=torch.float64)
    with torch.no_grad():
        output, _ = mixer.same_episode_conv(x, torch.zeros(2, kernel - 1, inner_dim, dtype=torch.float64),
                                            no_reset(2, 11))
        expected = F.conv1d(x.transpose(1, 2), mixer.conv_weight[:, None], mixer.conv_bias,
                            padding=kernel - 1, groups=inner_dim)[..., :11].transpose(1, 2)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)


def test_mamba_conv_window_never_reads_across_a_reset():
    mixer = build("mamba").mixers[0]
    inner_dim, kernel = mixer.conv_weight.shape
    length = 9
    x = torch.randn(3, length, inner_dim, dtype=torch.float64)
    conv_state = torch.randn(3, kernel - 1, inner_dim, dtype=torch.float64)
    reset = no_reset(3, length)
    reset[0, 2] = True          # inside the first window: the carried state and x[0, :2] must vanish
    reset[1, [4, 5]] = True     # back-to-back episodes
    reset[2, length - 2] = True  # near the end: the next conv state keeps only the new episode
    with torch.no_grad():
        output, next_state = mixer.same_episode_conv(x, conv_state, reset)
        expected = reference_conv(mixer, x, conv_state, reset)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(next_state[2], torch.cat([torch.zeros(1, inner_dim, dtype=torch.float64),
                                                         x[2, -2:]]))
    torch.testing.assert_close(next_state[0], x[0, -(kernel - 1):])
    # Inputs one step before the reset sit inside the window of the reset step, yet change nothing from it on.
    changed = x.clone()
    changed[0, :2] += 5.0
    with torch.no_grad():
        changed_output, _ = mixer.same_episode_conv(changed, conv_state, reset)
    assert torch.equal(changed_output[0, 2:], output[0, 2:])
    assert not torch.allclose(changed_output[0, :2], output[0, :2])


@pytest.mark.parametrize("length", [1, 37])
def test_mamba_cpu_path_equals_the_naive_scan_in_outputs_and_every_gradient(length, monkeypatch):
    """On the CPU `selective_scan` takes its sequential path; the backbone (randomised parameters, so decays
    and steps are far from their initial values) must match the Python-loop reference, gradients included."""
    torch.manual_seed(7)
    backbone = make_backbone("mamba", INPUT_DIM, HIDDEN_DIM, state_size=5, conv_kernel=3).double()
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(3, length, INPUT_DIM, generator=generator, dtype=torch.float64)
    reset = torch.rand(3, length, generator=generator) < 0.25
    reset[0, 0] = True
    state = {name: torch.randn(value.shape, generator=generator, dtype=value.dtype)
             for name, value in backbone.initial_state(3).items()}
    results = []
    for impl in ("auto", "naive"):
        scan = memory.mamba.selective_scan
        monkeypatch.setattr(memory.mamba, "selective_scan", lambda *args, impl=impl, **kwargs: scan(*args, **kwargs, impl=impl))
        inputs = x.clone().requires_grad_()
        leaves = {name: value.clone().requires_grad_() for name, value in state.items()}
        y, final = backbone(inputs, leaves, reset)
        loss = (y * torch.sin(y)).sum() + sum((value ** 2).sum() for value in final.values())
        gradients = torch.autograd.grad(loss, [inputs, *leaves.values(), *backbone.parameters()])
        results.append((y, final, gradients))
        monkeypatch.undo()
    (y_cpu, final_cpu, grads_cpu), (y_naive, final_naive, grads_naive) = results
    torch.testing.assert_close(y_cpu, y_naive, rtol=1e-10, atol=1e-10)
    for name in final_naive:
        torch.testing.assert_close(final_cpu[name], final_naive[name], rtol=1e-10, atol=1e-10)
    for grad_cpu, grad_naive in zip(grads_cpu, grads_naive):
        torch.testing.assert_close(grad_cpu, grad_naive, rtol=1e-9, atol=1e-9)


def test_mamba_step_drops_the_conv_state_at_a_reset():
    backbone = build("mamba")
    state = {key: torch.randn_like(value) for key, value in backbone.initial_state(2).items()}
    x = torch.randn(2, INPUT_DIM, dtype=torch.float64)
    reset = torch.tensor([True, False])
    with torch.no_grad():
        y, _ = backbone.step(x, state, reset)
        y_fresh, _ = backbone.step(x, backbone.initial_state(2), reset)
    assert torch.equal(y[0], y_fresh[0])
    assert not torch.allclose(y[1], y_fresh[1])


def test_mamba_init_delta_range_and_stable_decay():
    backbone = build("mamba", dt_min=1e-3, dt_max=1e-1)
    for mixer in backbone.mixers:
        initial_delta = F.softplus(mixer.dt_proj.bias)
        assert bool(((initial_delta >= 1e-3 * (1 - 1e-6)) & (initial_delta <= 1e-1 * (1 + 1e-6))).all())
        A = -torch.exp(mixer.A_log)
        torch.testing.assert_close(A, -torch.arange(1.0, 17, dtype=torch.float64).expand_as(A))
        assert mixer.dt_rank == math.ceil(HIDDEN_DIM / 16)

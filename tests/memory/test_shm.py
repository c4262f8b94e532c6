"""SHM's calibration exponent: what it predicts is what the recurrence does."""

from __future__ import annotations

import pytest
import torch

from memory.shm import SHMBackbone


def test_the_calibration_exponent_is_the_memorys_growth_over_a_cycle_of_the_table():
    torch.manual_seed(0)
    shm = SHMBackbone(input_dim=5, hidden_dim=8, memory_dim=4, num_thetas=6)
    with torch.no_grad():
        shm.value.weight.zero_()  # no writes: the memory only calibrates
        shm.thetas.mul_(4.0)  # factors far from 1, some entries growing and some shrinking
    batch, cycles = 3, 2
    x = torch.randn(batch, shm.input_dim)
    start = {"memory": torch.ones(batch, 4, 4),
             "episode_step": torch.zeros(batch, dtype=torch.int64)}
    steps = cycles * shm.num_thetas
    _, final = shm(x[:, None].expand(batch, steps, shm.input_dim), start, torch.zeros(batch, steps, dtype=torch.bool))
    with torch.no_grad():
        exponent = shm.calibration_exponent(x)
    assert exponent.shape == (batch, 4, 4)
    assert bool((exponent > 0).any()) and bool((exponent < 0).any())
    torch.testing.assert_close(final["memory"].log() / steps, exponent, atol=1e-5, rtol=1e-4)


def test_a_zero_table_neither_grows_nor_shrinks_the_memory():
    shm = SHMBackbone(input_dim=5, hidden_dim=8, memory_dim=4, num_thetas=6)
    with torch.no_grad():
        shm.thetas.zero_()
        exponent = shm.calibration_exponent(torch.randn(2, 5))
    assert bool((exponent == 0).all())


def test_a_bound_no_entry_reaches_leaves_the_recurrence_as_the_parallel_scan_computes_it():
    torch.manual_seed(1)
    unbounded = SHMBackbone(input_dim=5, hidden_dim=8, memory_dim=4, num_thetas=6).double()
    bounded = SHMBackbone(input_dim=5, hidden_dim=8, memory_dim=4, num_thetas=6, memory_bound=1e30).double()
    bounded.load_state_dict(unbounded.state_dict())
    x = torch.randn(3, 37, 5, dtype=torch.float64, requires_grad=True)
    reset = torch.rand(3, 37) < 0.2
    state = unbounded.initial_state(3)
    y_unbounded, final_unbounded = unbounded(x, state, reset)
    y_bounded, final_bounded = bounded(x, state, reset)
    torch.testing.assert_close(y_bounded, y_unbounded)
    torch.testing.assert_close(final_bounded["memory"], final_unbounded["memory"])
    weights = torch.randn_like(y_unbounded)
    (grad_unbounded,) = torch.autograd.grad((y_unbounded * weights).sum(), x)
    (grad_bounded,) = torch.autograd.grad((y_bounded * weights).sum(), x)
    torch.testing.assert_close(grad_bounded, grad_unbounded)


def growing(memory_bound: float) -> SHMBackbone:
    """An SHM whose calibration doubles every entry at every step (theta and v_c large and positive)."""
    torch.manual_seed(2)
    shm = SHMBackbone(input_dim=5, hidden_dim=8, memory_dim=4, num_thetas=6, memory_bound=memory_bound)
    with torch.no_grad():
        shm.thetas.fill_(10.0)
        shm.calibration_value.weight.zero_()
        shm.calibration_value.weight[:, 0] = 10.0
    return shm


def test_the_bound_keeps_a_growing_memory_finite_where_the_paper_s_equations_overflow():
    x = torch.zeros(2, 300, 5)
    x[..., 0] = 1.0  # after the LayerNorm, a large positive first feature: v_c > 0, every factor near 2
    reset = torch.zeros(2, 300, dtype=torch.bool)
    unbounded, bounded = growing(0.0), growing(100.0)
    with torch.no_grad():
        y_unbounded, _ = unbounded(x, unbounded.initial_state(2), reset)
        y_bounded, final = bounded(x, bounded.initial_state(2), reset)
    assert not bool(y_unbounded.isfinite().all()), "2^300 overflows float32 without a bound"
    assert bool(y_bounded.isfinite().all())
    assert final["memory"].abs().max().item() == 100.0


def test_the_input_shortcut_reads_the_present_input_past_the_memory():
    torch.manual_seed(3)
    shm = SHMBackbone(input_dim=5, hidden_dim=8, memory_dim=4, num_thetas=6, input_shortcut=True)
    with torch.no_grad():
        shm.value.weight.zero_()  # nothing written: the memory reads zero
    x = torch.randn(2, 4, 5, requires_grad=True)
    y, _ = shm(x, shm.initial_state(2), torch.zeros(2, 4, dtype=torch.bool))
    (grad,) = torch.autograd.grad(y[:, -1].sum(), x)
    assert grad[:, -1].abs().sum() > 0 and bool((grad[:, :-1] == 0).all())


@pytest.mark.parametrize("options, message", [
    ({"memory_bound": -1.0}, r"memory_bound must be a finite number >= 0 \(0: unbounded\), got -1.0"),
    ({"memory_bound": float("inf")}, "memory_bound must be a finite number >= 0"),
    ({"memory_bound": float("nan")}, "memory_bound must be a finite number >= 0"),
    ({"memory_bound": "100"}, "memory_bound must be a finite number >= 0"),
    ({"input_shortcut": 1}, "input_shortcut must be true or false, got 1"),
])
def test_bad_options_are_named_with_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        SHMBackbone(input_dim=5, hidden_dim=8, **options)

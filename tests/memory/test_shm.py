"""SHM's calibration exponent: what it predicts is what the recurrence does."""

from __future__ import annotations

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

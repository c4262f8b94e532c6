"""Sequence replay: windows are consecutive rows of one env, keep is_first, never cross the seam."""

from __future__ import annotations

import pytest
import torch

from agents.replay import SequenceReplay

NUM_ENVS = 3
FIELDS = {"step": ((), torch.int64), "env": ((), torch.int64), "is_first": ((), torch.bool),
          "obs": ((2,), torch.float32)}


def fill(replay: SequenceReplay, steps: int, episode_length: int = 5) -> None:
    """Row t of env e: step t, env e, is_first every `episode_length` steps (offset by e)."""
    for t in range(steps):
        replay.add({
            "step": torch.full((NUM_ENVS,), t),
            "env": torch.arange(NUM_ENVS),
            "is_first": (torch.arange(NUM_ENVS) + t) % episode_length == 0,
            "obs": torch.stack([torch.full((NUM_ENVS,), float(t)), torch.arange(NUM_ENVS).float()], -1),
        })


def test_windows_are_consecutive_rows_of_one_env_with_their_is_first_flags():
    torch.manual_seed(0)
    replay = SequenceReplay(capacity=NUM_ENVS * 100, num_envs=NUM_ENVS, fields=FIELDS)
    fill(replay, 40)
    batch = replay.sample(batch_size=64, length=12)
    assert batch["step"].shape == (64, 12) and batch["obs"].shape == (64, 12, 2)
    assert (batch["step"].diff(dim=1) == 1).all()
    assert (batch["env"] == batch["env"][:, :1]).all()
    expected_first = (batch["env"] + batch["step"]) % 5 == 0
    assert torch.equal(batch["is_first"], expected_first)
    assert batch["is_first"].any(1).all(), "12-step windows over 5-step episodes cross episode starts"
    assert torch.equal(batch["obs"][..., 0].long(), batch["step"])
    assert batch["step"].min() >= 0 and batch["step"].max() <= 39


def test_windows_never_cross_the_seam_between_newest_and_oldest_rows():
    torch.manual_seed(1)
    replay = SequenceReplay(capacity=NUM_ENVS * 20, num_envs=NUM_ENVS, fields=FIELDS)
    fill(replay, 47)  # wrapped twice: rows hold steps 27..46, the write position is mid-buffer
    assert replay.size == 20 and replay.num_steps == NUM_ENVS * 20
    batch = replay.sample(batch_size=500, length=8)
    assert (batch["step"].diff(dim=1) == 1).all()
    assert batch["step"].min() == 27 and batch["step"].max() == 46


def test_recency_sampling_prefers_new_windows_and_uniform_does_not():
    torch.manual_seed(2)
    uniform = SequenceReplay(NUM_ENVS * 200, NUM_ENVS, FIELDS, sampling="uniform")
    recent = SequenceReplay(NUM_ENVS * 200, NUM_ENVS, FIELDS, sampling="recency", recency_exponent=1.0)
    fill(uniform, 200)
    fill(recent, 200)
    uniform_starts = uniform.sample(4000, 10)["step"][:, 0].float()
    recent_starts = recent.sample(4000, 10)["step"][:, 0].float()
    assert uniform_starts.mean().item() == pytest.approx(95.5, abs=4.0)
    assert recent_starts.mean().item() > 150.0
    assert (recent_starts == 190).float().mean() > 0.1, "the newest start has the largest weight"


def test_bad_input_is_refused_with_a_clear_message():
    replay = SequenceReplay(NUM_ENVS * 10, NUM_ENVS, FIELDS)
    with pytest.raises(ValueError, match="fewer than the window length"):
        replay.sample(2, 4)
    with pytest.raises(ValueError, match="must have the fields"):
        replay.add({"step": torch.zeros(NUM_ENVS)})
    bad = {"step": torch.zeros(NUM_ENVS + 1, dtype=torch.int64), "env": torch.zeros(NUM_ENVS, dtype=torch.int64),
           "is_first": torch.zeros(NUM_ENVS, dtype=torch.bool), "obs": torch.zeros(NUM_ENVS, 2)}
    with pytest.raises(ValueError, match=r"replay field 'step' must have shape \(3,\)"):
        replay.add(bad)
    with pytest.raises(ValueError, match="unknown replay sampling"):
        SequenceReplay(30, NUM_ENVS, FIELDS, sampling="prioritised")
    with pytest.raises(ValueError, match="at least one step per env"):
        SequenceReplay(2, NUM_ENVS, FIELDS)


def test_state_dict_round_trip_restores_contents_and_position():
    replay = SequenceReplay(NUM_ENVS * 10, NUM_ENVS, FIELDS)
    fill(replay, 13)
    restored = SequenceReplay(NUM_ENVS * 10, NUM_ENVS, FIELDS)
    restored.load_state_dict(replay.state_dict())
    assert (restored.position, restored.size) == (replay.position, replay.size)
    torch.manual_seed(3)
    first = replay.sample(16, 6)
    torch.manual_seed(3)
    second = restored.sample(16, 6)
    for name in FIELDS:
        assert torch.equal(first[name], second[name])
    with pytest.raises(ValueError, match="does not match this buffer"):
        SequenceReplay(NUM_ENVS * 5, NUM_ENVS, FIELDS).load_state_dict(replay.state_dict())


def test_the_index_of_a_window_names_its_rows_and_overwrite_writes_there_across_the_seam():
    torch.manual_seed(4)
    fields = {**FIELDS, "memory": ((2, 3), torch.complex64)}
    replay = SequenceReplay(NUM_ENVS * 10, NUM_ENVS, fields)
    for t in range(23):  # wrapped twice: rows hold steps 13..22, the write position is row 3
        replay.add({
            "step": torch.full((NUM_ENVS,), t), "env": torch.arange(NUM_ENVS),
            "is_first": torch.zeros(NUM_ENVS, dtype=torch.bool), "obs": torch.zeros(NUM_ENVS, 2),
            "memory": torch.complex(torch.full((NUM_ENVS, 2, 3), float(t)),
                                    torch.arange(NUM_ENVS).float()[:, None, None].expand(-1, 2, 3)),
        })
    batch, (envs, rows) = replay.sample_with_index(200, 6)
    assert torch.equal(batch["step"], replay.storage["step"][envs[:, None], rows])
    assert torch.equal(batch["env"], envs[:, None].expand(-1, 6))
    assert torch.equal(batch["memory"].real[..., 0, 0].long(), batch["step"])
    assert torch.equal(batch["memory"].imag[..., 0, 0].long(), batch["env"])
    assert (rows[:, -1] < rows[:, 0]).any(), "some windows must wrap around the end of the ring"
    wrapped = int(torch.nonzero(rows[:, -1] < rows[:, 0])[0])
    before = replay.storage["memory"].clone()
    env, window_rows = envs[wrapped: wrapped + 1], rows[wrapped: wrapped + 1, 1:]
    marker = torch.full((1, 5, 2, 3), -1.0 + 2.0j)
    replay.overwrite(env, window_rows, {"memory": marker})
    written = torch.zeros(NUM_ENVS, 10, dtype=torch.bool)
    written[env, window_rows] = True
    assert (replay.storage["memory"][written] == -1.0 + 2.0j).all()
    assert torch.equal(replay.storage["memory"][~written], before[~written])
    with pytest.raises(ValueError, match="replay has no field 'state'"):
        replay.overwrite(env, window_rows, {"state": marker})
    with pytest.raises(ValueError, match=r"replay field 'memory' must be overwritten with shape \(1, 5, 2, 3\)"):
        replay.overwrite(env, window_rows, {"memory": marker[:, :4]})


def test_rows_after_names_the_next_step_of_each_window_and_gather_reads_it():
    torch.manual_seed(5)
    replay = SequenceReplay(NUM_ENVS * 10, NUM_ENVS, FIELDS)
    fill(replay, 23)  # rows hold steps 13..22 and the ring has wrapped
    _, (envs, rows) = replay.sample_with_index(300, 4)
    after, written = replay.rows_after(rows[:, -1])
    last_steps = replay.storage["step"][envs, rows[:, -1]]
    assert torch.equal(written, last_steps < 22), "only a window ending at the newest step has no row after it"
    assert written.any() and (~written).any()
    assert torch.equal(replay.gather(envs, after, ["step"])["step"][written], last_steps[written] + 1)

"""scripts/bench_sample_efficiency.py: the shared threshold test and the sb3-contrib policy behind `evaluate`."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from agents.run import evaluate
from envs.registry import gymnasium_id, make_env
from scripts.bench_sample_efficiency import ENV, RollingSuccess


def test_threshold_waits_for_a_full_window_then_records_the_first_step_at_or_above_it():
    tracker = RollingSuccess(window=4, threshold=0.75)
    tracker.add([1.0, 1.0, 1.0], env_steps=8)  # 3 of 4: the window is not full yet
    assert tracker.reached_steps is None
    tracker.add([0.0], env_steps=16)  # full, mean 0.75: reached here
    assert (tracker.reached_steps, tracker.episodes) == (16, 4)
    reached_seconds = tracker.reached_seconds
    tracker.add([1.0, 1.0], env_steps=24)  # later steps never move the first crossing
    assert (tracker.reached_steps, tracker.reached_seconds) == (16, reached_seconds)


def test_threshold_counts_only_the_last_window_episodes():
    tracker = RollingSuccess(window=4, threshold=0.75)
    tracker.add([0.0, 0.0, 1.0, 1.0], env_steps=8)
    tracker.add([], env_steps=16)
    tracker.add([1.0], env_steps=24)  # window: 0, 1, 1, 1 -> 0.75
    assert tracker.reached_steps == 24


@pytest.mark.skipif(find_spec("sb3_contrib") is None,
                    reason="sb3-contrib (the dev extra) is not installed: the sb3 side of the benchmark needs it")
def test_sb3_policy_plays_the_memrl_batched_env_through_evaluate():
    import gymnasium
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from scripts.bench_sample_efficiency import SB3Policy

    torch.set_num_threads(1)
    vector_env = DummyVecEnv([lambda: gymnasium.make(gymnasium_id(ENV))])
    model = RecurrentPPO("MlpLstmPolicy", vector_env, seed=0, device="cpu", policy_kwargs={"lstm_hidden_size": 8})
    agent = SB3Policy(model.policy)
    result = evaluate(agent, make_env(ENV, num_envs=6, seed=0), deterministic=False)
    assert result["episodes"] == 6
    # Every episode ended: by the time limit at the latest, or at the first junction / a wrong turn.
    assert 1 <= result["length_mean"] <= make_env(ENV, num_envs=1).max_episode_steps
    state = agent.initial_state(6)
    action, next_state = agent.act(torch.zeros(6, 3), state, torch.ones(6, dtype=torch.bool), deterministic=True)
    assert action.shape == (6,) and set(action.tolist()) <= {0, 1, 2}
    assert next_state["hidden"].shape == next_state["cell"].shape == (6, 1, 8)
    assert next_state["hidden"].abs().sum() > 0  # the LSTM read the observation

"""Learning claims, measured by running the real agent on small budgets.

On `tmaze` (memrl's 10-cell T-maze whose cue is visible only at the first step; chance 0.5)
memory backbones must reach >= 0.9 evaluation success, and the memoryless baseline must not.
(`memory-retention`, Ni et al.'s 100-cell passive T-maze, is measured in benchmarks/, not in CI.)
On `memory-rewrite` (Endless T-Maze, 3 corridors; chance 1/8) every backbone the field compares
against (FFM, SHM, GTrXL, LRU, minGRU, Mamba-2, Gated DeltaNet, mLSTM) must reach >= 0.9 with the
preset's budget (400k steps, about 1-7 minutes each on a loaded CPU: `slow`); FFM, the cheapest, must
also do it at 240k steps in CI (every seed of 1-3 reaches 1.00 there; at 160k seed 2 stops
at 0.88, too close to the line for a test that must not depend on the machine's rounding).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents.ppo import PPOConfig, PPOTrainer
from agents.run import evaluate, seed_everything
from agents.train import PRESETS
from envs.registry import make_env


def train_and_evaluate(backbone: str, total_steps: int, seed: int = 1, env_name: str = "tmaze",
                       preset_name: str | None = None) -> dict:
    """PPO with the preset `preset_name` (default: the one named like the env), evaluated over 400 episodes."""
    torch.set_num_threads(1)
    seed_everything(seed)
    preset = PRESETS[preset_name or env_name]
    config = PPOConfig(**{k: v for k, v in preset.items() if k in {f.name for f in dataclasses.fields(PPOConfig)}})
    env = make_env(env_name, num_envs=preset["num_envs"], seed=seed)
    trainer = PPOTrainer(config, env, total_steps, torch.device("cpu"), backbone, progress=False)
    trainer.train()
    return evaluate(trainer.agent, make_env(env_name, num_envs=400, seed=seed + 1))


def test_s5_learns_the_short_tmaze():
    result = train_and_evaluate("s5", total_steps=160_000)
    assert result["success_rate"] >= 0.9, result


def test_memoryless_baseline_stays_at_chance():
    result = train_and_evaluate("none", total_steps=60_000)
    # 400 episodes, chance 0.5: 0.5 + 4 standard errors (0.025 each) = 0.6.
    assert result["success_rate"] <= 0.6, result


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["lstm", "gru", "mamba", "transformer", "memory_tokens", "s4"])
def test_memory_backbones_learn_the_short_tmaze(backbone):
    result = train_and_evaluate(backbone, total_steps=400_000)
    assert result["success_rate"] >= 0.9, result


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ffm", "shm", "gtrxl", "lru", "mingru", "mamba2", "gated_deltanet", "mlstm"])
def test_compared_backbones_learn_memory_rewrite(backbone):
    budget = PRESETS["memory-rewrite"]["total_steps"]
    result = train_and_evaluate(backbone, total_steps=budget, env_name="memory-rewrite")
    assert result["success_rate"] >= 0.9, result


def test_ffm_learns_memory_rewrite_at_ci_budget():
    result = train_and_evaluate("ffm", total_steps=240_000, env_name="memory-rewrite")
    assert result["success_rate"] >= 0.9, result


def test_sample_efficient_preset_learns_memory_rewrite_in_fewer_steps_than_sb3():
    # sb3-contrib's RecurrentPPO (LSTM, 8 envs, its defaults) needed 34,264 env steps on its best seed of
    # three (median 39,648) to pass 0.9 rolling training success (benchmarks/sample_efficiency.md); the
    # preset's whole budget is 24,576. The claim is the median seed's, as in that benchmark: one seed alone
    # turns on the machine's rounding (seed 1 reaches 1.000 on the CPUs of the benchmark, 0.72 on a Zen 5 EPYC,
    # where seeds 2-5 reach 1.000).
    budget = PRESETS["sample-efficient"]["total_steps"]
    assert budget < 34_264
    successes = sorted(
        train_and_evaluate("s5", total_steps=budget, seed=seed, env_name="memory-rewrite",
                           preset_name="sample-efficient")["success_rate"]
        for seed in (1, 2, 3)
    )
    assert successes[1] >= 0.9, successes

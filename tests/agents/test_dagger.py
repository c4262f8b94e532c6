"""DAgger (`--agent dagger`): the student imitates the env's oracle; learning measured on the real agent.

On `memory-rewrite` (Endless T-Maze, 3 corridors of 5; chance 1/8) s5 imitates the oracle perfectly by
3-8k env steps (seeds 1-4), so the preset's 12,288 steps leave a factor of about two; the memoryless
student cannot, since which way to turn was shown only at the corridor's start.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.dagger import DAggerConfig, DAggerTrainer
from agents.ppo import PPOConfig, PPOTrainer
from agents.run import load_checkpoint
from agents.train import PRESETS, RunConfig, initialise_from, train
from envs.registry import make_env


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.train", "--agent", "dagger", *args],
                          capture_output=True, text=True, timeout=300)


def test_s5_learns_memory_rewrite_from_the_teacher_in_fewer_steps_than_ppo(tmp_path):
    budget = PRESETS["dagger:memory-rewrite"]["total_steps"]
    assert budget < PRESETS["sample-efficient"]["total_steps"]  # PPO's fastest setting on this task: 24,576
    result = train(agent="dagger", backbone="s5", env="memory-rewrite", device="cpu", torch_threads=1,
                   run_dir=tmp_path / "run", quiet=True)
    assert result.eval["success_rate"] >= 0.9, result.eval


def test_a_memoryless_student_stays_near_chance(tmp_path):
    result = train(agent="dagger", backbone="none", env="memory-rewrite", device="cpu", torch_threads=1,
                   run_dir=tmp_path / "run", quiet=True)
    # 200 episodes, chance 1/8: 0.125 + 4 standard errors (0.023 each) = 0.22.
    assert result.eval["success_rate"] <= 0.22, result.eval


def test_s5_learns_the_passive_t_maze_turn_with_the_loss_summed_over_time(tmp_path):
    # One step in 31 is the turn the cue decides; summed over each window, 100 updates teach s5 the cue on seeds
    # 1-3 (averaged over the steps, seeds 1 and 3 still turn at chance there: 0.58, 0.47).
    result = train(agent="dagger", backbone="s5", env="tmaze-passive-l30", preset="memory-retention", num_envs=16,
                   num_steps=31, total_steps=100 * 16 * 31, device="cpu", torch_threads=1, eval_episodes=64,
                   run_dir=tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dagger"]["sum_loss_over_time"] is True
    # 64 episodes; turning at chance would give 0.5 +- 0.0625.
    assert result.eval["success_rate"] >= 0.9, result.eval


def make_trainer(teacher_prob: float, total_steps: int = 4 * 8 * 16, run_dir: Path | None = None) -> DAggerTrainer:
    torch.manual_seed(0)
    config = DAggerConfig(teacher_prob=teacher_prob, num_steps=16, hidden_dim=16, num_minibatches=2, update_epochs=1,
                          checkpoint_every=2)
    return DAggerTrainer(config, make_env("memory-rewrite", num_envs=8, seed=1), total_steps, torch.device("cpu"),
                         "gru", run_dir=run_dir, progress=False)


class Interrupt(Exception):
    """Raised from a callback to simulate a run killed between updates."""


def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_run(tmp_path):
    uninterrupted = make_trainer(0.5, run_dir=tmp_path / "a")
    uninterrupted.train()

    def stop_after_second_update(trainer, metrics):
        if trainer.update == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        make_trainer(0.5, run_dir=tmp_path / "b").train(on_update=stop_after_second_update)
    resumed = make_trainer(0.5, run_dir=tmp_path / "b")
    torch.manual_seed(12345)  # another RNG state: the checkpoint must restore the mixture's draws
    resumed.restore(load_checkpoint(tmp_path / "b"))
    assert resumed.update == 2
    resumed.train()
    expected = uninterrupted.agent.state_dict()
    for name, value in resumed.agent.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_the_teacher_share_starts_at_teacher_prob_and_falls_linearly():
    trainer = make_trainer(teacher_prob=0.8)
    shares = []
    for _ in range(trainer.num_updates):
        shares.append(trainer.teacher_share())
        trainer.learn(trainer.collect(writer=None))
        trainer.update += 1
    assert shares == pytest.approx([0.8, 0.6, 0.4, 0.2])


def record_actions(trainer: DAggerTrainer, monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Spies on the teacher's, the student's and the executed actions of every step."""
    seen = {"teacher": [], "student": [], "executed": []}

    def spy(name, function):
        def recorded(*args):
            result = function(*args)
            seen[name].append(result.clone() if name != "executed" else args[0].clone())
            return result
        return recorded

    monkeypatch.setattr(trainer.env, "oracle_action", spy("teacher", trainer.env.oracle_action))
    monkeypatch.setattr(trainer.agent.actor, "mode", spy("student", trainer.agent.actor.mode))
    monkeypatch.setattr(trainer.env, "step", spy("executed", trainer.env.step))
    return seen


@pytest.mark.parametrize("teacher_prob", [1.0, 0.0, 0.5])
def test_each_step_executes_the_teacher_or_the_student_and_learns_the_teacher(teacher_prob, monkeypatch):
    trainer = make_trainer(teacher_prob, total_steps=100 * 8 * 16)
    seen = record_actions(trainer, monkeypatch)
    rollouts = [trainer.collect(writer=None) for _ in range(2)]
    teacher, student, executed = (torch.stack(seen[name], dim=1) for name in ("teacher", "student", "executed"))
    labels = torch.cat([rollout.actions for rollout in rollouts], dim=1)
    assert torch.equal(labels, teacher)
    by_teacher = executed == teacher
    assert (by_teacher | (executed == student)).all()
    differ = teacher != student
    share_where_they_differ = by_teacher[differ].float().mean().item()
    if teacher_prob == 1.0:
        assert by_teacher.all()
        # The oracle never fails, and 32 steps finish every env's first episode (18 steps).
        assert trainer.statistics.success_rate() == 1.0
    elif teacher_prob == 0.0:
        assert (executed == student).all()
    else:
        assert differ.sum() >= 100 and 0.3 < share_where_they_differ < 0.7, (differ.sum(), share_where_they_differ)


def test_an_env_without_an_oracle_is_refused_in_one_sentence(tmp_path):
    result = run_cli("--env", "CartPole-v1", "--preset", "smoke", "--device", "cpu", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    assert "DAgger imitates the env's oracle_action()" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_teacher_prob_outside_zero_one_is_refused_in_one_sentence(tmp_path):
    result = run_cli("--teacher-prob", "1.5", "--preset", "smoke", "--device", "cpu", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and "--teacher-prob must be a probability in [0, 1], got 1.5" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dagger_run_starts_a_ppo_run_on_the_same_network(tmp_path):
    source_dir = tmp_path / "dagger"
    train(agent="dagger", backbone="s5", env="memory-rewrite", preset="smoke", device="cpu", eval_episodes=0,
          run_dir=source_dir, quiet=True)
    env = make_env("memory-rewrite", num_envs=8, seed=1)
    ppo_fields = {config_field.name for config_field in dataclasses.fields(PPOConfig)}
    fine_tuned = PPOTrainer(PPOConfig(**{k: v for k, v in PRESETS["smoke"].items() if k in ppo_fields}),
                            env, 2_048, torch.device("cpu"), "s5", progress=False).agent
    initialise_from(fine_tuned, source_dir, RunConfig(agent="ppo", backbone="s5", env="memory-rewrite"))
    source = load_checkpoint(source_dir)["agent"]
    for name, value in fine_tuned.state_dict().items():
        assert torch.equal(value, source[name]), name

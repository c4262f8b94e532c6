"""Sample efficiency beside sb3-contrib: env steps and wall time until training success reaches 0.9.

    python -m scripts.bench_sample_efficiency --seeds 1 2 3 --preset sample-efficient

memrl's PPO (a train-agent preset and backbone) and sb3-contrib's RecurrentPPO (`MlpLstmPolicy`, all
its defaults, 8 envs of the gymnasium id `memrl/MemoryRewrite-v0`: the same task and observation)
train on memory-rewrite, seed by seed, alternating (sb3, memrl, sb3, memrl, ...) so that the load of
a shared machine weighs on both. Both run in this process with one torch thread.

The threshold, measured identically for both: after every vector step, the finished training episodes
of that step (all envs, in env order) join a window of the last `--window` (100) finished episodes; the
threshold is reached at the first vector step after which the window is full and its mean success is
>= `--threshold` (0.9). Env steps = vector steps x envs; wall seconds run from just before the agent
and its training envs are built to that step. A run goes on through the update that follows the
rollout in which it reached the threshold, then stops (or, without reaching it, at sb3's `--max-steps` and
at the end of memrl's preset budget, `total_steps`, which also sets the length of its learning-rate
schedule), and its policy is evaluated by `agents.run.evaluate` on the same batched memrl env, 200 episodes,
greedy and sampled.

Writes `benchmarks/sample_efficiency.md` and `.csv` (device, 1-minute load average, date, commit, command).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import gymnasium
import numpy as np
import torch
from torch import nn

from agents.ppo import PPOTrainer
from agents.run import EpisodeStatistics, evaluate, seed_everything, write_atomically
from agents.train import PRESETS, UsageError, build_parser, make_training_env, resolve_config
from envs.registry import gymnasium_id, make_env
from scripts.bench_backbones import describe_device

ENV = "memory-rewrite"
SB3_NUM_ENVS = 8
EVAL_EPISODES = 200
EVAL_SEED_OFFSET = 1_000_003
"""Eval envs are seeded with seed + this (as train-agent's final evaluation is)."""


class RollingSuccess:
    """The threshold test both agents share: the window of the last `window` finished episodes."""

    def __init__(self, window: int, threshold: float):
        self.successes: deque[float] = deque(maxlen=window)
        self.threshold = threshold
        self.started = time.perf_counter()
        self.episodes = 0
        self.reached_steps: int | None = None
        self.reached_seconds: float | None = None

    def add(self, successes: list[float], env_steps: int) -> None:
        """The successes (0/1) of the episodes that finished in the vector step that brought the run to `env_steps`."""
        self.successes.extend(successes)
        self.episodes += len(successes)
        full = len(self.successes) == self.successes.maxlen
        if self.reached_steps is None and full and float(np.mean(self.successes)) >= self.threshold:
            self.reached_steps = env_steps
            self.reached_seconds = time.perf_counter() - self.started


class ThresholdStatistics(EpisodeStatistics):
    """memrl's episode statistics, also feeding each step's finished episodes to a RollingSuccess."""

    def __init__(self, tracker: RollingSuccess):
        super().__init__()
        self.tracker = tracker

    def add(self, returns, lengths, successes, writer, global_step) -> None:
        super().add(returns, lengths, successes, writer, global_step)
        self.tracker.add(successes, global_step)


@dataclass
class Result:
    """One run: when it reached the threshold (None: never), how long it trained, how its policy then evaluates."""

    agent: str
    seed: int
    steps_to_threshold: int | None
    seconds_to_threshold: float | None
    steps_trained: int
    train_seconds: float
    greedy_success: float
    sampled_success: float
    load_average: float


def run_memrl(preset: str, backbone: str, seed: int, window: int, threshold: float) -> Result:
    """train-agent's config for `preset`, trained by PPOTrainer until the threshold or the preset's total_steps
    (which is also its learning-rate schedule's length)."""
    args = build_parser().parse_args(["--preset", preset, "--backbone", backbone, "--env", ENV, "--seed", str(seed),
                                      "--device", "cpu"])
    run, config, _ = resolve_config(args)
    seed_everything(seed)
    tracker = RollingSuccess(window, threshold)
    env = make_training_env(ENV, run.num_envs, torch.device("cpu"), seed, run.env_options)
    trainer = PPOTrainer(config, env, run.total_steps, torch.device("cpu"), run.backbone, progress=False)
    trainer.statistics = ThresholdStatistics(tracker)

    def stop_once_reached(trainer: PPOTrainer, metrics: dict) -> None:
        if tracker.reached_steps is not None:
            trainer.num_updates = trainer.update

    trainer.train(on_update=stop_once_reached)
    train_seconds = time.perf_counter() - tracker.started
    return Result(f"memrl {backbone} ({preset})", seed, tracker.reached_steps, tracker.reached_seconds,
                  trainer.global_step, train_seconds, *evaluate_both(trainer.agent, seed), os.getloadavg()[0])


class SB3Policy(nn.Module):
    """An sb3-contrib recurrent policy behind `agents.run.evaluate`'s interface (initial_state, act)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """{"hidden", "cell"}: [B, layers, H] each (the actor LSTM's state, batch-first)."""
        layers, _, hidden = self.policy.lstm_hidden_state_shape
        zeros = torch.zeros(batch_size, layers, hidden, device=device)
        return {"hidden": zeros, "cell": zeros.clone()}

    def act(self, obs: torch.Tensor, state: dict, is_first: torch.Tensor, deterministic: bool):
        """obs [B, obs_dim], is_first [B] -> (action [B], next state)."""
        lstm_state = tuple(state[key].transpose(0, 1).numpy() for key in ("hidden", "cell"))
        action, (hidden, cell) = self.policy.predict(obs.numpy(), lstm_state, is_first.numpy(), deterministic)
        next_state = {"hidden": torch.from_numpy(hidden).transpose(0, 1), "cell": torch.from_numpy(cell).transpose(0, 1)}
        return torch.as_tensor(action), next_state


def run_sb3(seed: int, max_steps: int, window: int, threshold: float) -> Result:
    """sb3-contrib RecurrentPPO("MlpLstmPolicy"), defaults, 8 DummyVecEnv copies of the gymnasium id."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Threshold(BaseCallback):
        def __init__(self):
            super().__init__()
            self.stop = False

        def _on_rollout_start(self) -> None:
            self.stop = tracker.reached_steps is not None

        def _on_step(self) -> bool:
            finished = [float(info["success"]) for info, done in zip(self.locals["infos"], self.locals["dones"]) if done]
            if finished:
                tracker.add(finished, self.num_timesteps)
            return not self.stop

    tracker = RollingSuccess(window, threshold)
    env = DummyVecEnv([partial(gymnasium.make, gymnasium_id(ENV)) for _ in range(SB3_NUM_ENVS)])
    env.seed(seed)
    model = RecurrentPPO("MlpLstmPolicy", env, seed=seed, device="cpu")
    callback = Threshold()
    model.learn(total_timesteps=max_steps, callback=callback)
    train_seconds = time.perf_counter() - tracker.started
    steps_trained = model.num_timesteps - (SB3_NUM_ENVS if callback.stop else 0)  # the stopping step is not trained on
    return Result("sb3-contrib RecurrentPPO", seed, tracker.reached_steps, tracker.reached_seconds, steps_trained,
                  train_seconds, *evaluate_both(SB3Policy(model.policy), seed), os.getloadavg()[0])


def evaluate_both(agent: nn.Module, seed: int) -> tuple[float, float]:
    """Greedy and sampled success over EVAL_EPISODES episodes of the batched env (same episodes for every agent)."""
    rates = []
    for deterministic in (True, False):
        seed_everything(seed)
        env = make_env(ENV, num_envs=EVAL_EPISODES, seed=seed + EVAL_SEED_OFFSET)
        with torch.no_grad():
            rates.append(evaluate(agent, env, deterministic=deterministic)["success_rate"])
    return rates[0], rates[1]


def median_counting_misses(values: list) -> float:
    """Median over runs, a run that never reached the threshold counting as infinite (it lies above its cap)."""
    return statistics.median_high(math.inf if value is None else value for value in values)


def summary_rows(results: list[Result]) -> list[str]:
    rows = []
    for agent in dict.fromkeys(result.agent for result in results):
        own = [result for result in results if result.agent == agent]
        steps = median_counting_misses([result.steps_to_threshold for result in own])
        seconds = median_counting_misses([result.seconds_to_threshold for result in own])
        reached = sum(result.steps_to_threshold is not None for result in own)
        rows.append(f"| {agent} | {reached}/{len(own)} | {'not reached' if steps == math.inf else f'{steps:,.0f}'} | "
                    f"{'not reached' if seconds == math.inf else f'{seconds:.1f}'} | "
                    f"{statistics.median(r.greedy_success for r in own):.3f} | "
                    f"{statistics.median(r.sampled_success for r in own):.3f} |")
    return rows


def write_report(results: list[Result], output: Path, command: str, load_at_start: float, window: int,
                 threshold: float, max_steps: int, preset: str) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    fields = list(asdict(results[0]))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(result) for result in results)
    write_atomically(output.with_suffix(".csv"), table.getvalue().encode())

    def cell(value, spec):
        return "not reached" if value is None else format(value, spec)

    lines = [
        "# Sample efficiency on memory-rewrite: memrl PPO beside sb3-contrib RecurrentPPO (CPU, under load)",
        "",
        f"- device: {describe_device(torch.device('cpu'))}, {os.cpu_count()} cores shared with other jobs; "
        f"1-minute load average at start / end: {load_at_start:.1f} / {os.getloadavg()[0]:.1f}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
        f"torch {torch.__version__}",
        f"- command: `{command}`",
        f"- metric: env steps and wall seconds until the mean success of the last {window} finished training "
        f"episodes first reaches {threshold} (checked after every vector step, identically for both; wall time "
        f"from building the agent and its envs); caps: sb3 {max_steps:,} env steps, memrl its preset's "
        f"total_steps; then {EVAL_EPISODES}-episode evaluation, greedy and sampled",
        f"- sb3-contrib: RecurrentPPO('MlpLstmPolicy'), all defaults ({SB3_NUM_ENVS} envs, 128 steps, batch 128, "
        "10 epochs, lr 3e-4, LSTM 256 for actor and critic), DummyVecEnv of `memrl/MemoryRewrite-v0`",
        f"- memrl: PPO, preset `{preset}` = `{PRESETS[preset]}` (other settings: PPOConfig's defaults)",
        "- runs alternate sb3, memrl per seed in one process, torch threads 1",
        "",
        "| agent | reached | median env steps to 0.9 | median seconds to 0.9 | median greedy eval | median sampled eval |",
        "|---|---:|---:|---:|---:|---:|",
        *summary_rows(results),
        "",
        "| agent | seed | env steps to 0.9 | seconds to 0.9 | steps trained | train seconds | greedy eval | "
        "sampled eval | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r.agent} | {r.seed} | {cell(r.steps_to_threshold, ',')} | {cell(r.seconds_to_threshold, '.1f')} | "
          f"{r.steps_trained:,} | {r.train_seconds:.1f} | {r.greedy_success:.3f} | {r.sampled_success:.3f} | "
          f"{r.load_average:.1f} |" for r in results),
    ]
    write_atomically(output.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--preset", default="sample-efficient", help="memrl's train-agent preset")
    parser.add_argument("--backbone", default="s5", help="memrl's backbone")
    parser.add_argument("--max-steps", type=int, default=100_000, help="cap on sb3's env steps per run "
                        "(memrl's is its preset's total_steps)")
    parser.add_argument("--window", type=int, default=100, help="finished training episodes in the rolling window")
    parser.add_argument("--threshold", type=float, default=0.9, help="rolling success to reach")
    parser.add_argument("--skip-sb3", action="store_true", help="run memrl only (for sweeps)")
    parser.add_argument("--output", default="benchmarks/sample_efficiency", help="path without suffix (.md and .csv)")
    args = parser.parse_args(argv)
    try:
        import sb3_contrib  # noqa: F401  (checked before any run starts)
    except ImportError:
        if not args.skip_sb3:
            parser.exit(2, "bench_sample_efficiency: sb3-contrib is not installed; "
                           "pip install --no-deps sb3-contrib stable-baselines3, or pass --skip-sb3\n")
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()[0]
    results = []
    command = "OMP_NUM_THREADS=1 python -m scripts.bench_sample_efficiency " + shlex.join(
        sys.argv[1:] if argv is None else argv)

    def record(result: Result) -> None:
        """Keep a run and rewrite the report, so that every finished run is on disk."""
        results.append(result)
        write_report(results, Path(args.output), command, load_at_start, args.window, args.threshold, args.max_steps,
                     args.preset)
        print(f"{result.agent} seed {result.seed}: {result.steps_to_threshold} steps, "
              f"{result.seconds_to_threshold} s to {args.threshold}; eval greedy {result.greedy_success:.3f} "
              f"sampled {result.sampled_success:.3f}; load {result.load_average:.1f}", flush=True)

    try:
        for seed in args.seeds:
            if not args.skip_sb3:
                record(run_sb3(seed, args.max_steps, args.window, args.threshold))
            record(run_memrl(args.preset, args.backbone, seed, args.window, args.threshold))
    except UsageError as error:
        parser.exit(2, f"bench_sample_efficiency: {error}\n")
    print(f"wrote {args.output}.md and .csv")


if __name__ == "__main__":
    main()

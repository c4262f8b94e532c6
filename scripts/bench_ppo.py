"""Full-loop PPO throughput per backbone (rollout + update), as a markdown table.

    python -m scripts.bench_ppo --device cpu --updates 3 [--output benchmarks/<new file>.md]

The table is printed; `--output` also writes it to a file (atomically, replacing that file: the
curated records under benchmarks/ are edited by hand, so name a new file).

Every backbone trains at one fixed config (the `memory-rewrite` preset's PPO settings, env
`memory-rewrite`) for a few updates after one warm-up update; SPS = env steps / wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import subprocess
import time
from pathlib import Path

import torch

from agents.ppo import PPOConfig, PPOTrainer
from agents.run import seed_everything, write_atomically
from agents.train import PRESETS
from envs.registry import make_env
from memory import BACKBONES
from scripts.bench_backbones import describe_device


def measure(backbone: str, device: torch.device, num_envs: int, updates: int, rollout_steps: int) -> dict:
    preset = dict(PRESETS["memory-rewrite"], num_steps=rollout_steps)
    config = PPOConfig(**{k: v for k, v in preset.items() if k in {f.name for f in dataclasses.fields(PPOConfig)}})
    seed_everything(0)
    env = make_env("memory-rewrite", num_envs=num_envs, device=device, seed=0)
    steps_per_update = num_envs * config.num_steps
    trainer = PPOTrainer(config, env, steps_per_update * (updates + 1), device, backbone, progress=False)
    rollout = trainer.collect(writer=None)
    trainer.learn(rollout)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    rollout_seconds = 0.0
    for _ in range(updates):
        rollout_started = time.perf_counter()
        rollout = trainer.collect(writer=None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rollout_seconds += time.perf_counter() - rollout_started
        trainer.learn(rollout)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    return {"backbone": backbone, "sps": steps_per_update * updates / total,
            "rollout_share": rollout_seconds / total, "update_seconds": (total - rollout_seconds) / updates}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--updates", type=int, default=3, help="timed updates after one warm-up update")
    parser.add_argument("--rollout-steps", type=int, default=PRESETS["memory-rewrite"]["num_steps"],
                        help="env steps per env per update (default: the memory-rewrite preset's)")
    parser.add_argument("--backbones", nargs="*", default=sorted(BACKBONES))
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0 keeps the default)")
    parser.add_argument("--output", default=None, help="also write the table to this file (replacing it)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_ppo: --device cuda was asked for but torch sees no CUDA device\n")
    if args.rollout_steps < 1:
        parser.exit(2, f"bench_ppo: --rollout-steps must be at least 1, got {args.rollout_steps}\n")
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    rows = []
    for backbone in args.backbones:
        row = measure(backbone, device, args.num_envs, args.updates, args.rollout_steps)
        rows.append(row)
        print(f"{backbone:>14}: {row['sps']:9,.0f} SPS  rollout {row['rollout_share']:.0%}  "
              f"update {row['update_seconds']:.2f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = (f"python -m scripts.bench_ppo --device {args.device} --num-envs {args.num_envs} "
               f"--updates {args.updates} --rollout-steps {args.rollout_steps} --torch-threads {args.torch_threads}")
    lines = [
        f"# PPO full-loop throughput ({device.type})",
        "",
        f"- device: {describe_device(device)}",
        f"- date: {datetime.date.today().isoformat()}, commit {commit}, torch {torch.__version__}",
        f"- command: `{command}`",
        f"- env memory-rewrite, {args.num_envs} envs, memory-rewrite preset (rollout {args.rollout_steps} steps, hidden 64, "
        "2 minibatches x 4 epochs); SPS = env steps / wall time over the timed updates",
        "",
        "| backbone | SPS | rollout share of time | update seconds |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['backbone']} | {r['sps']:,.0f} | {r['rollout_share']:.0%} | {r['update_seconds']:.2f} |" for r in rows]
    print("\n".join(lines))
    if args.output:
        write_atomically(Path(args.output), ("\n".join(lines) + "\n").encode())
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

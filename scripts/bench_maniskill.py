"""Measure env steps per second of memrl's ManiSkill tasks on GPU-parallel simulation with RGB rendering.

    python scripts/bench_maniskill.py                                  # remember-color-3, 256..2048 envs
    python scripts/bench_maniskill.py --envs maniskill-shell-game-touch --num-envs 512 --steps 300
    python scripts/bench_maniskill.py --output benchmarks/maniskill.md

For every task and num_envs: one `ManiSkillBatchedEnv` on CUDA (GPU PhysX, one scene per env,
64 x 64 RGB camera), `env.step` on uniformly random actions drawn before timing, auto-resets
included; `--warmup` steps, then `--repeats` timed runs of `--steps` steps with the device
synchronised around each. Steps/s = num_envs * steps / seconds; the best run is reported next to
the median. It needs a CUDA GPU that can also render with Vulkan, and refuses in one sentence
(exit code 2) otherwise. With `--output` the markdown table is written there with device, date,
commit, versions and this command.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from envs.maniskill import ManiSkillUnavailable, make_maniskill_env, maniskill_names  # noqa: E402
from scripts.bench_envs import describe_device, format_rate, git_commit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["maniskill-remember-color-3"], help="ManiSkill task short names")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[256, 512, 1024, 2048], help="parallel envs to time")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before the timed runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the best is reported")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to write (none: print only)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.envs if name not in maniskill_names()]
    if unknown:
        parser.error(f"unknown ManiSkill task {unknown[0]!r}; choose from: {', '.join(maniskill_names())}")
    if min(args.num_envs) <= 0 or args.steps <= 0 or args.repeats <= 0 or args.warmup < 0:
        parser.error("--num-envs, --steps and --repeats must be positive and --warmup 0 or more")
    if not torch.cuda.is_available():
        parser.exit(2, "bench_maniskill: error: the benchmark times GPU-parallel simulation and needs a CUDA GPU "
                       "that renders with Vulkan, and torch sees no CUDA device here\n")
    return args


def measure(name: str, num_envs: int, args: argparse.Namespace) -> tuple[float, float]:
    """-> (best, median) env steps per second over the timed runs."""
    env = make_maniskill_env(name, num_envs=num_envs, device="cuda", seed=0)
    actions = torch.rand(64, num_envs, *env.single_action_space.shape, device=env.device) * 2 - 1
    env.reset()
    for index in range(args.warmup):
        env.step(actions[index % len(actions)])
    rates = []
    for _ in range(args.repeats):
        torch.cuda.synchronize(env.device)
        start = time.perf_counter()
        for index in range(args.steps):
            env.step(actions[index % len(actions)])
        torch.cuda.synchronize(env.device)
        rates.append(num_envs * args.steps / (time.perf_counter() - start))
    env.close()
    return max(rates), statistics.median(rates)


def write_report(args: argparse.Namespace, results: dict[tuple[str, int], tuple[float, float]]) -> str:
    lines = [
        "# ManiSkill memory tasks: env throughput",
        "",
        "Env steps per second (num_envs x steps / wall time) of `ManiSkillBatchedEnv.step` on GPU PhysX",
        "with each task's default observation (MIKASA-Robo tasks: base and wrist camera, 128 x 128 RGB, and",
        "joints; memrl's touch tasks: one 64 x 64 camera and joints), random actions, auto-resets included.",
        "Each cell: best of the timed runs (median in brackets).",
        "",
        f"- device: {describe_device(torch.device('cuda'))}",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- commit: {git_commit()}",
        (f"- torch {torch.__version__}, mani-skill {importlib.metadata.version('mani-skill')}, "
         f"Python {platform.python_version()}"),
        f"- command: `{shlex.join(['python', 'scripts/bench_maniskill.py', *sys.argv[1:]])}`",
        f"- runs: {args.repeats} of {args.steps} steps after {args.warmup} warm-up steps",
        "",
        "| env | " + " | ".join(f"{n} envs" for n in args.num_envs) + " |",
        "|" + "---|" * (len(args.num_envs) + 1),
    ]
    for name in args.envs:
        cells = (f"{format_rate(best)} ({format_rate(median)})" for best, median in (results[name, n] for n in args.num_envs))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = {}
    try:
        for name in args.envs:
            for num_envs in args.num_envs:
                best, median = results[name, num_envs] = measure(name, num_envs, args)
                print(f"{name:32s} {num_envs:>6d} envs  {format_rate(best)} steps/s (median {format_rate(median)})",
                      flush=True)
    except ManiSkillUnavailable as error:
        print(f"bench_maniskill: error: {error}", file=sys.stderr)
        return 2
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.output.with_suffix(args.output.suffix + ".tmp")
        temporary.write_text(write_report(args, results))
        temporary.replace(args.output)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure how many env steps per second memrl's batched tasks run, and record the results.

    python scripts/bench_envs.py                                   # CPU, 2 threads, default tasks
    python scripts/bench_envs.py --threads 2 1 --envs endless-tmaze
    python scripts/bench_envs.py --device cuda --num-envs 4096 65536 1048576
    python scripts/bench_envs.py --popgym --threads 1 --num-envs 1 64 1024   # every POPGym env, beside popgym's

For every task and num_envs: `env.step` is called on uniformly random actions (continuous
tasks: uniform in the action bounds) drawn before timing (a pool of 64 action vectors is
cycled, so sampling costs nothing), auto-resets included. A run is `steps` consecutive steps; the throughput of the best of `--repeats` runs
is reported (the least disturbed by other processes on a shared machine) next to the median.
Steps/s = num_envs * steps / seconds. On CUDA the device is synchronised around each run.
With --popgym the envs are memrl's popgym-<env>-<level> names (every POPGym env memrl has) and
popgym 1.0.7's own envs are timed in the same run, vectorised the way gymnasium vectorises them
(`gymnasium.vector.SyncVectorEnv`, its default next-step auto-reset, popgym being numpy on the
CPU); the table adds popgym's rate and memrl's / popgym's ratio. The comparison is made fair:
both sides run the same number of steps per timed run, at least the preset's
`max_episode_steps` (so every env of both sides ends and resets an episode in every run, whatever
its phase), both start from a reset and the same warm-up, both step on uniformly random actions
from a pool of the same size (popgym's `action_space.sample()`: the same distributions), and the
repeats alternate memrl, popgym, memrl, ... so that the load of a shared machine falls on both alike.
The markdown table goes to --output with device, date, commit, torch version and this command.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from envs.popgym import PRESETS  # noqa: E402
from envs.registry import env_names, make_env  # noqa: E402
from scripts.popgym_parity import POPGYM_NAMES, make_popgym_env, popgym_class_name  # noqa: E402

DEFAULT_ENVS = (
    "endless-tmaze",
    "endless-tmaze-uniform-l10-n5",
    "tmaze",
    "color-cubes-trivial",
    "color-cubes-medium",
    "repeat-first",
    "repeat-previous",
    "count-recall",
    "autoencode",
)
ACTION_POOL = 64
RUN_ELEMENTS = 2_000_000
"""Env steps (num_envs x steps) per timed run, so every run lasts long enough to time."""
POPGYM_RUN_ELEMENTS = 20_000
"""The same with --popgym, for both sides: popgym's envs step about a hundred times slower
(a run still lasts at least one episode, see `popgym_run_steps`)."""
WARMUP_STEPS = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="short env names (see envs.registry)")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 64, 4096, 65536], help="batch sizes to time")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", nargs="+", type=int, default=[2], help="torch CPU thread counts to time (one table each)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement; the best is reported")
    parser.add_argument("--max-steps", type=int, default=1000, help="at most this many steps per timed run")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "envs.md", help="markdown file to write")
    parser.add_argument("--note", default="", help="a line added under the table (e.g. what else ran on the machine)")
    parser.add_argument("--popgym", action="store_true",
                        help="time every popgym-<env>-<level> env (unless --envs is given) beside popgym 1.0.7's own env")
    args = parser.parse_args(argv)
    if args.popgym:
        if importlib.util.find_spec("popgym") is None:
            parser.error("--popgym needs popgym 1.0.7 (pip install popgym==1.0.7, or the dev extra)")
        if args.envs == list(DEFAULT_ENVS):
            args.envs = list(POPGYM_NAMES)
        if any(name not in POPGYM_NAMES for name in args.envs):
            bad = next(name for name in args.envs if name not in POPGYM_NAMES)
            parser.error(f"--popgym times envs with a popgym counterpart; {bad!r} is not one: {', '.join(POPGYM_NAMES)}")
    unknown = [name for name in args.envs if name not in env_names()]
    if unknown:
        parser.error(f"unknown env {unknown[0]!r}; choose from: {', '.join(env_names())}")
    if any(n <= 0 for n in args.num_envs):
        parser.error(f"--num-envs must be positive integers, got {args.num_envs}")
    if min(args.threads) <= 0 or args.repeats <= 0 or args.max_steps <= 0:
        parser.error("--threads, --repeats and --max-steps must be positive")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"--device {args.device!r} is not usable here: {error}")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_action_pool(env) -> torch.Tensor:
    """ACTION_POOL uniformly random actions for every env: int64 [P, N], or float32 [P, N, action_dim]
    uniform in the action bounds for a continuous task."""
    generator = torch.Generator(device=env.device).manual_seed(1)
    if env.action_dim is None:
        return torch.randint(env.num_actions, (ACTION_POOL, env.num_envs), generator=generator, device=env.device)
    unit = torch.rand(ACTION_POOL, env.num_envs, env.action_dim, generator=generator, device=env.device)
    return env.action_low + unit * (env.action_high - env.action_low)


def run_steps(num_envs: int, max_steps: int) -> int:
    """Steps per timed run of memrl's envs alone: min(max_steps, RUN_ELEMENTS / num_envs), at least 10."""
    return max(10, min(max_steps, RUN_ELEMENTS // num_envs))


def popgym_run_steps(name: str, num_envs: int, max_steps: int) -> int:
    """Steps per timed run with --popgym, the same for both sides: min(max_steps, POPGYM_RUN_ELEMENTS /
    num_envs), but at least the preset's max_episode_steps, so that every run includes a reset of every env."""
    task_class, kwargs = PRESETS[name]
    episode_steps = task_class(num_envs=1, seed=0, **kwargs).max_episode_steps
    return max(10, episode_steps, min(max_steps, POPGYM_RUN_ELEMENTS // num_envs))


class MemrlRunner:
    """memrl's env `name` stepped on a pool of random actions; `run(steps)` -> seconds."""

    def __init__(self, name: str, num_envs: int, device: str):
        self.env = make_env(name, num_envs=num_envs, device=device, seed=0)
        self.actions = random_action_pool(self.env)
        self.index = 0
        self.env.reset()

    def run(self, steps: int) -> float:
        synchronize(self.env.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.env.step(self.actions[self.index % ACTION_POOL])
            self.index += 1
        synchronize(self.env.device)
        return time.perf_counter() - start

    def close(self) -> None:
        pass


class PopgymRunner:
    """popgym 1.0.7's env for memrl's `name`, `num_envs` of them in gymnasium's SyncVectorEnv, stepped on
    a pool of random actions (`action_space.sample()`); `run(steps)` -> seconds."""

    def __init__(self, name: str, num_envs: int):
        import gymnasium

        self.env = gymnasium.vector.SyncVectorEnv([lambda: make_popgym_env(name)] * num_envs)
        self.env.action_space.seed(1)
        self.actions = [self.env.action_space.sample() for _ in range(ACTION_POOL)]
        self.index = 0
        self.env.reset(seed=0)

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.env.step(self.actions[self.index % ACTION_POOL])
            self.index += 1
        return time.perf_counter() - start

    def close(self) -> None:
        self.env.close()


def time_runners(runners: list, num_envs: int, steps: int, repeats: int) -> list[tuple[float, float]]:
    """Warm every runner up, then time `repeats` runs of `steps` steps of each, alternating between them
    -> (best, median) env steps per second per runner."""
    for runner in runners:
        runner.run(min(steps, WARMUP_STEPS))
    rates = [[] for _ in runners]
    for _ in range(repeats):
        for runner, runner_rates in zip(runners, rates):
            runner_rates.append(num_envs * steps / runner.run(steps))
    for runner in runners:
        runner.close()
    return [(max(runner_rates), statistics.median(runner_rates)) for runner_rates in rates]


def measure(name: str, num_envs: int, device: str, repeats: int, max_steps: int) -> tuple[float, float]:
    """-> (best, median) env steps per second of memrl's env over `repeats` timed runs."""
    return time_runners([MemrlRunner(name, num_envs, device)], num_envs, run_steps(num_envs, max_steps), repeats)[0]


def measure_beside_popgym(name: str, num_envs: int, device: str, repeats: int, max_steps: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """-> ((best, median) of memrl's env, (best, median) of popgym's), timed in alternation over the same steps."""
    runners = [MemrlRunner(name, num_envs, device), PopgymRunner(name, num_envs)]
    memrl, popgym = time_runners(runners, num_envs, popgym_run_steps(name, num_envs, max_steps), repeats)
    return memrl, popgym


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_device(device: torch.device) -> str:
    cpu = f"{cpu_model()}, {os.cpu_count()} cores visible"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {cpu})"
    return cpu


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def load_average() -> float:
    """The 1-minute load average (how busy a shared machine was), or nan where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def format_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e5 else f"{rate / 1e3:.1f} k"


def write_report(args: argparse.Namespace, results: dict[tuple[int, str, int], tuple[float, float]],
                 popgym_results: dict[tuple[int, str, int], tuple[float, float]]) -> str:
    device = torch.device(args.device)
    lines = [
        "# Batched env throughput",
        "",
        "Env steps per second (num_envs x steps / wall time) of `env.step` on uniformly random",
        "actions drawn beforehand, auto-resets included. Each cell: best of the timed runs",
        "(median in brackets).",
        "",
        f"- device: {describe_device(device)}",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- commit: {git_commit()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- 1-minute load average: {args.load_at_start:.2f} at the start, {load_average():.2f} at the end ({os.cpu_count()} cores)",
        f"- command: `{shlex.join(['python', 'scripts/bench_envs.py', *sys.argv[1:]])}`",
        f"- runs: {args.repeats} per cell, each of min({args.max_steps}, {RUN_ELEMENTS:,} / num_envs) steps (at least 10)",
    ]
    if popgym_results:
        lines[-1] = (
            f"- runs: {args.repeats} per cell and side, alternating memrl and popgym, each of max(the preset's max_episode_steps, "
            f"min({args.max_steps}, {POPGYM_RUN_ELEMENTS:,} / num_envs)) steps on both sides (at least 10), so every run "
            "includes a reset of every env; both sides step on uniformly random actions from a pool of "
            f"{ACTION_POOL} pre-drawn action vectors, after a reset and {WARMUP_STEPS} warm-up steps"
        )
    for threads in args.threads:
        lines += [
            "",
            f"## torch threads = {threads}",
            "",
            "| env | " + " | ".join(f"{n} envs" for n in args.num_envs) + " |",
            "|" + "---|" * (len(args.num_envs) + 1),
        ]
        for name in args.envs:
            rates = (results[threads, name, n] for n in args.num_envs)
            lines.append(f"| {name} | " + " | ".join(f"{format_rate(best)} ({format_rate(median)})" for best, median in rates) + " |")
        if popgym_results:
            lines += popgym_table(args, results, popgym_results, threads)
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def popgym_table(args: argparse.Namespace, results: dict, popgym_results: dict, threads: int) -> list[str]:
    """Markdown rows: memrl's best rate, popgym's (gymnasium SyncVectorEnv) and their ratio, per env and num_envs."""
    lines = [
        "",
        f"### beside popgym 1.0.7 (gymnasium SyncVectorEnv, numpy; best of the runs; torch threads = {threads})",
        "",
        "| env | popgym id | " + " | ".join(f"{n} envs: memrl / popgym (ratio)" for n in args.num_envs) + " |",
        "|" + "---|" * (len(args.num_envs) + 2),
    ]
    for name in args.envs:
        cells = []
        for num_envs in args.num_envs:
            memrl_rate, popgym_rate = results[threads, name, num_envs][0], popgym_results[threads, name, num_envs][0]
            cells.append(f"{format_rate(memrl_rate)} / {format_rate(popgym_rate)} ({memrl_rate / popgym_rate:.2f}x)")
        lines.append(f"| {name} | popgym-{popgym_class_name(name)}-v0 | " + " | ".join(cells) + " |")
    lowest = []
    for num_envs in args.num_envs:
        ratio, name = min((results[threads, name, num_envs][0] / popgym_results[threads, name, num_envs][0], name) for name in args.envs)
        lowest.append(f"{num_envs} envs {ratio:.2f}x ({name})")
    lines += ["", "Lowest ratio per batch size: " + ", ".join(lowest) + "."]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.load_at_start = load_average()
    results, popgym_results = {}, {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.envs:
            for num_envs in args.num_envs:
                if args.popgym:
                    memrl, popgym = measure_beside_popgym(name, num_envs, args.device, args.repeats, args.max_steps)
                    results[threads, name, num_envs], popgym_results[threads, name, num_envs] = memrl, popgym
                else:
                    results[threads, name, num_envs] = measure(name, num_envs, args.device, args.repeats, args.max_steps)
                best, median = results[threads, name, num_envs]
                print(f"threads {threads}  {name:30s} {num_envs:>7d} envs  {format_rate(best)} steps/s (median {format_rate(median)})", flush=True)
                if args.popgym:
                    best, _ = popgym_results[threads, name, num_envs]
                    ratio = results[threads, name, num_envs][0] / best
                    print(f"{'':10s} popgym {name:23s} {num_envs:>7d} envs  {format_rate(best)} steps/s  ratio {ratio:.2f}x", flush=True)
    report = write_report(args, results, popgym_results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(args.output.suffix + ".tmp")
    temporary.write_text(report)
    temporary.replace(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

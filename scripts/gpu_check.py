"""The first run on a GPU machine, in one command: versions, the CUDA tests, production shapes and the
benchmarks behind the speed goals, written to benchmarks/gpu/.

    python -m scripts.gpu_check             # on one H100/H200: about 9.5 minutes at most
    python -m scripts.gpu_check --dry-run   # every step, tiny, on the CPU under TRITON_INTERPRET=1

Steps (each a subprocess with its own time limit; a step that fails or runs out of time is
recorded and the others still run):
  tests     pytest -m cuda on tests/kernels and tests/memory: every kernel against its float64 CPU
            reference at production shapes, and every backbone's CUDA float32 parity (forward and
            every gradient, random resets, T = 512)
  kernels   scripts/bench_kernels.py: linear scan GB/s and % of peak at B*D = 65,536 channels and
            T = 1024 (float32, complex64); selective scan against its torch ("parallel") path;
            fused LSTM/GRU against the step loop and cuDNN nn.LSTM/nn.GRU        -> kernels.md
  ppo       scripts/bench_ppo.py on CUDA: PPO update seconds (S5 vs LSTM) and end-to-end SPS of
            every backbone                                                       -> ppo.md
  envs      scripts/bench_envs.py on CUDA at 65,536 envs                         -> envs.md
  maniskill the ManiSkill tests with a renderer (every MIKASA-Robo family built, rendered and
            stepped on the GPU; the rgb+joints observation hides the answer); they skip on the CPU
The summary (device, date, commit, command, versions, each step's status, time and last lines)
goes to summary.md. The dry run writes to a temporary directory (or --output-dir), never to
benchmarks/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Peak HBM bandwidth in GB/s by device-name fragment (vendor data sheets), for "% of peak".
PEAK_BANDWIDTH_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100": 1555.0}
TOTAL_BUDGET_SECONDS = 9 * 60 + 30


@dataclasses.dataclass
class Step:
    name: str
    arguments: list[str]  # after `python -m`
    timeout_seconds: int
    output_file: str | None = None


@dataclasses.dataclass
class Outcome:
    step: Step
    status: str
    seconds: float
    tail: str


def peak_bandwidth(device_name: str) -> float | None:
    for fragment, gbps in PEAK_BANDWIDTH_GBPS.items():
        if fragment in device_name:
            return gbps
    return None


def plan(dry_run: bool, output_dir: Path, peak_gbps: float) -> list[Step]:
    """The steps: production shapes on CUDA, or the same steps tiny on the CPU."""
    cuda_tests = ["pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/kernels", "tests/memory"]
    maniskill_tests = ["pytest", "-q", "-p", "no:cacheprovider", "tests/envs/test_maniskill.py",
                       "tests/envs/test_maniskill_mikasa.py"]
    if dry_run:
        kernel_shapes = ["--device", "cpu", "--scan-shapes", "2x8x4", "--ssm-shapes", "2x8x4", "--state-size", "2",
                         "--rnn-shapes", "2x4", "--hidden-size", "16"]
        ppo = ["--device", "cpu", "--num-envs", "2", "--updates", "1", "--rollout-steps", "8", "--backbones", "lstm", "s5"]
        envs = ["--device", "cpu", "--num-envs", "16", "--repeats", "1", "--max-steps", "10", "--threads", "1",
                "--envs", "endless-tmaze"]
        # Under the interpreter every cuda-marked test skips: this proves they still collect.
        return [
            Step("tests", cuda_tests, 120),
            Step("kernels", ["scripts.bench_kernels", *kernel_shapes, "--output", str(output_dir / "kernels.md")], 120,
                 "kernels.md"),
            Step("ppo", ["scripts.bench_ppo", *ppo, "--output", str(output_dir / "ppo.md")], 120, "ppo.md"),
            Step("envs", ["scripts.bench_envs", *envs, "--output", str(output_dir / "envs.md")], 60, "envs.md"),
            Step("maniskill", [*maniskill_tests, "--collect-only"], 60),
        ]
    kernel_shapes = ["--scan-shapes", "256x1024x256,16x8192x256", "--ssm-shapes", "64x1024x512,4x8192x256",
                     "--state-size", "16", "--rnn-shapes", "1024x128,64x1024", "--hidden-size", "128",
                     "--peak-gbps", str(peak_gbps)]
    return [
        Step("tests", cuda_tests, 150),
        Step("kernels", ["scripts.bench_kernels", *kernel_shapes, "--output", str(output_dir / "kernels.md")], 150,
             "kernels.md"),
        Step("ppo", ["scripts.bench_ppo", "--device", "cuda", "--num-envs", "1024", "--updates", "2",
                     "--output", str(output_dir / "ppo.md")], 120, "ppo.md"),
        Step("envs", ["scripts.bench_envs", "--device", "cuda", "--num-envs", "65536", "--repeats", "3", "--threads", "1",
                      "--output", str(output_dir / "envs.md")], 45, "envs.md"),
        Step("maniskill", maniskill_tests, 90),
    ]


def run_step(step: Step, environment: dict[str, str], seconds_left: float) -> Outcome:
    timeout = min(step.timeout_seconds, seconds_left)
    if timeout < 10:
        return Outcome(step, f"skipped: the {TOTAL_BUDGET_SECONDS / 60:g}-minute budget is spent", 0.0, "")
    command = [sys.executable, "-m", *step.arguments]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
        status = "ok" if completed.returncode == 0 else f"failed (exit {completed.returncode})"
        output = completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as expired:
        status = f"timed out after {timeout:.0f} s"
        output = "".join(part.decode() if isinstance(part, bytes) else (part or "") for part in (expired.stdout, expired.stderr))
    tail = "\n".join(output.strip().splitlines()[-15:])
    return Outcome(step, status, time.perf_counter() - started, tail)


def versions() -> dict[str, str]:
    import torch
    import triton

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": str(torch.version.cuda),
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run under TRITON_INTERPRET=1)",
    }
    if torch.cuda.is_available():
        found["device count"] = str(torch.cuda.device_count())
        found["compute capability"] = "sm_%d%d" % torch.cuda.get_device_capability()
        found["device memory"] = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
        try:
            found["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                             capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            found["driver"] = "unknown (nvidia-smi failed)"
    return found


def summary(outcomes: list[Outcome], found: dict[str, str], command: str, dry_run: bool, peak_gbps: float) -> str:
    from scripts.bench_kernels import git_commit

    lines = [
        "# First GPU run: scripts/gpu_check.py" + (" (DRY RUN on the CPU: no measurements)" if dry_run else ""),
        "",
        f"- device: {found['device']}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: {git_commit()}",
        f"- command: `{command}`",
        "- versions: " + ", ".join(f"{key} {value}" for key, value in found.items() if key != "device"),
        f"- peak bandwidth used for % of peak: {peak_gbps:g} GB/s",
        "",
        "| step | status | seconds | output |",
        "|---|---|---:|---|",
    ]
    for outcome in outcomes:
        lines.append(f"| {outcome.step.name} | {outcome.status} | {outcome.seconds:.0f} | {outcome.step.output_file or '-'} |")
    for outcome in outcomes:
        lines += ["", f"## {outcome.step.name}", "", f"`python -m {shlex.join(outcome.step.arguments)}`", "", "```",
                  outcome.tail, "```"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step tiny, on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the markdown goes (default benchmarks/gpu; a temporary directory for --dry-run)")
    parser.add_argument("--peak-gbps", type=float, default=None,
                        help="peak memory bandwidth in GB/s (default: from the device name, e.g. H100 SXM 3350, H200 4800)")
    return parser.parse_args(argv)


def output_directory(args: argparse.Namespace) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """(where the markdown goes, the temporary directory to clean up or None): --output-dir, else
    benchmarks/gpu, except for a dry run, which gets a temporary directory."""
    temporary = tempfile.TemporaryDirectory(prefix="gpu_check_") if args.dry_run and args.output_dir is None else None
    output_dir = args.output_dir or (Path(temporary.name) if temporary else REPO_ROOT / "benchmarks" / "gpu")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir, temporary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (torch sees none); use --dry-run to smoke-test it on the CPU.", file=sys.stderr)
        return 2
    if args.peak_gbps is not None and args.peak_gbps <= 0:
        print(f"--peak-gbps must be positive, got {args.peak_gbps}.", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak_gbps = args.peak_gbps or peak_bandwidth(device_name) or 3350.0
    output_dir, temporary = output_directory(args)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    if args.dry_run:
        environment["TRITON_INTERPRET"] = "1"
    else:
        environment.pop("TRITON_INTERPRET", None)
    command = shlex.join(["python", "-m", "scripts.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    found = versions()
    print("\n".join(f"{key}: {value}" for key, value in found.items()), flush=True)
    started = time.perf_counter()
    outcomes = []
    for step in plan(args.dry_run, output_dir, peak_gbps):
        outcome = run_step(step, environment, TOTAL_BUDGET_SECONDS - (time.perf_counter() - started))
        outcomes.append(outcome)
        print(f"[{outcome.step.name}] {outcome.status} in {outcome.seconds:.0f} s\n{outcome.tail}", flush=True)
    from scripts.bench_kernels import write_atomically

    write_atomically(output_dir / "summary.md", summary(outcomes, found, command, args.dry_run, peak_gbps))
    print(f"wrote {output_dir / 'summary.md'}")
    if temporary is not None:
        temporary.cleanup()
    return 0 if all(outcome.status == "ok" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

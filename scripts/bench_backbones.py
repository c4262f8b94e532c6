"""Time forward+backward of every memory backbone; write a markdown table to benchmarks/.

    python -m scripts.bench_backbones --device cpu --output benchmarks/backbones_cpu.md

For each backbone and shape: median wall time of forward and of forward+backward (with
random resets), the parameter count and memory. On CUDA memory is the peak allocated during
forward+backward; on the CPU it is the bytes autograd saves for backward (the activation
memory training pays for), measured with saved-tensor hooks.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from agents.run import write_atomically
from memory import BACKBONES, make_backbone

SHAPES = {"rl": (64, 128, 128), "long": (8, 2048, 128)}


def saved_activation_bytes(run) -> int:
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total


def time_call(function, device: torch.device, repeats: int) -> float:
    """Median seconds over `repeats` calls, after one warm-up call."""
    function()
    durations = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def benchmark(name: str, shape: tuple[int, int, int], device: torch.device, repeats: int) -> dict:
    batch_size, length, width = shape
    torch.manual_seed(0)
    backbone = make_backbone(name, width, width).to(device)
    x = torch.randn(batch_size, length, width, device=device, requires_grad=True)
    reset = torch.rand(batch_size, length, device=device) < 0.01
    state = backbone.initial_state(batch_size, device)

    def forward():
        with torch.no_grad():
            backbone(x, state, reset)

    def forward_backward():
        y, _ = backbone(x, state, reset)
        y.square().mean().backward()

    forward_seconds = time_call(forward, device, repeats)
    train_seconds = time_call(forward_backward, device, repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        forward_backward()
        memory = torch.cuda.max_memory_allocated(device)
    else:
        memory = saved_activation_bytes(forward_backward)
    return {
        "backbone": name,
        "shape": f"B={batch_size} T={length} D={width}",
        "parameters": sum(p.numel() for p in backbone.parameters()),
        "forward_ms": forward_seconds * 1e3,
        "forward_backward_ms": train_seconds * 1e3,
        "steps_per_second": batch_size * length / train_seconds,
        "memory_mib": memory / 2**20,
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backbones", nargs="*", default=sorted(BACKBONES), help="backbones to time")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES), help="shapes to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/backbones_<device>.md)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_backbones: --device cuda was asked for but torch sees no CUDA device\n")
    rows = []
    for shape_name in args.shapes:
        for name in args.backbones:
            row = benchmark(name, SHAPES[shape_name], device, args.repeats)
            rows.append(row)
            print(f"{row['backbone']:>14} {row['shape']:>20} fwd {row['forward_ms']:9.1f} ms  "
                  f"fwd+bwd {row['forward_backward_ms']:9.1f} ms  {row['memory_mib']:8.1f} MiB", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    memory_label = "peak allocated MiB" if device.type == "cuda" else "saved-for-backward MiB"
    lines = [
        f"# Backbone forward/backward timings ({device.type})",
        "",
        f"- device: {describe_device(device)}",
        f"- date: {datetime.date.today().isoformat()}, commit {commit}, torch {torch.__version__}",
        f"- command: `python -m scripts.bench_backbones --device {args.device} --repeats {args.repeats}`",
        "- median of the timed calls after one warm-up; random resets (1%); memory: " + memory_label,
        "",
        f"| backbone | shape | params | forward ms | fwd+bwd ms | train steps/s | {memory_label} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {row['shape']} | {row['parameters']:,} | {row['forward_ms']:.1f} | "
            f"{row['forward_backward_ms']:.1f} | {row['steps_per_second']:,.0f} | {row['memory_mib']:.1f} |"
        )
    output = Path(args.output or f"benchmarks/backbones_{device.type}.md")
    write_atomically(output, ("\n".join(lines) + "\n").encode())
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

"""Time memrl's Triton kernels against their references on a CUDA GPU and record the results.

    python scripts/bench_kernels.py                      # every kernel, default shapes
    python scripts/bench_kernels.py --kernels lstm gru --rnn-shapes 1024x128 --hidden-size 64
    python scripts/bench_kernels.py --kernels selective_scan --ssm-shapes 64x128x256 --state-size 16

For each kernel and shape: median time (triton.testing.do_bench) of the forward pass and of
forward + backward, for the Triton kernel and its references:
    linear_scan, selective_scan: "parallel" (log-depth torch scan) and "naive" (Python step loop);
    lstm / gru:  "naive" (Python step loop) and cuDNN nn.LSTM / nn.GRU, which cannot reset
                 and also does the input projection (input size = H), so it is a speed
                 reference only.
GB/s is the traffic of the fused kernels (below) divided by the time, for every row, so it
reads as an effective bandwidth; "% peak" compares it with --peak-gbps (3350 = H100 SXM).
Bytes counted, N = elements of one [B, T, D] (or [B, T, H]) tensor, e = bytes per element:
    linear_scan  forward 3Ne (read a, b, write h)   backward 5Ne (read a, h, dh; write da, db)
                 with a per-channel decay ("triton-per-channel", S4/S5's path): forward 2Ne, backward 3Ne
    lstm         forward N(5e + 4) (x_proj, h, float32 c)   backward N(10e + 4)
    gru          forward 4Ne                                backward 9Ne
    selective_scan  forward 4Ne + 2Se (read u, delta, z, B, C; write y)
                    backward 7Ne + 2Se (read u, delta, z, dy, B, C; write du, ddelta, dz)
                    S = elements of one [B, T, state size] tensor (B or C); the float32 states
                    stored at chunk starts and the per-channel-block dB, dC partials are not counted
plus B*T bytes of reset flags per pass; weights (for selective_scan A, D and the initial
state) are not counted. Inputs require grad in both passes, so "forward" includes what
autograd saves, as in training. "max |diff|" is the largest forward difference from the
naive reference run in float64 (cuDNN: not comparable).
The markdown table goes to --output with device, date, commit, versions and this command.
`--device cpu` runs the same code on the CPU (Triton under TRITON_INTERPRET=1, timed with a
wall clock instead of triton.testing.do_bench): only for smoke-testing this script at tiny shapes
(scripts/gpu_check.py --dry-run), never for numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from kernels.gru import gru_sequence  # noqa: E402
from kernels.linear_scan import linear_scan  # noqa: E402
from kernels.lstm import lstm_sequence  # noqa: E402
from kernels.selective_scan import selective_scan  # noqa: E402

DEVICE = "cuda"
KERNELS = ("linear_scan", "selective_scan", "lstm", "gru")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "complex64": torch.complex64}
WIDE = {torch.float32: torch.float64, torch.bfloat16: torch.float64, torch.float16: torch.float64, torch.complex64: torch.complex128}


def shape_list(text: str, rank: int) -> list[tuple[int, ...]]:
    """"1024x128x256,16x8192x256" -> [(1024, 128, 256), (16, 8192, 256)], each of `rank` positive sizes."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != rank or not all(part.isdigit() and int(part) > 0 for part in parts):
            layout = "x".join("BTD"[:rank])
            raise argparse.ArgumentTypeError(f"shapes must be comma-separated {layout} of positive integers, got {item!r}")
        shapes.append(tuple(int(part) for part in parts))
    return shapes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS), help="kernels to time")
    parser.add_argument("--scan-shapes", type=lambda text: shape_list(text, 3), default=shape_list("1024x128x256,16x8192x256", 3),
                        help="linear_scan shapes BxTxD, comma-separated")
    parser.add_argument("--scan-dtypes", nargs="+", choices=("float32", "bfloat16", "complex64"), default=["float32", "complex64"],
                        help="linear_scan dtypes")
    parser.add_argument("--ssm-shapes", type=lambda text: shape_list(text, 3), default=shape_list("64x128x256,4x8192x256", 3),
                        help="selective_scan shapes BxTxD (D = channels), comma-separated")
    parser.add_argument("--state-size", type=int, default=16, help="selective_scan state size N (float32 only)")
    parser.add_argument("--rnn-shapes", type=lambda text: shape_list(text, 2), default=shape_list("1024x128,16x8192", 2),
                        help="lstm/gru shapes BxT, comma-separated")
    parser.add_argument("--hidden-size", type=int, default=128, help="lstm/gru hidden size H")
    parser.add_argument("--rnn-dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="lstm/gru dtype")
    parser.add_argument("--reset-probability", type=float, default=0.01, help="chance that a step starts a new episode")
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="peak memory bandwidth in GB/s (H100 SXM: 3350)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "kernels.md", help="markdown file to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke test of this script under TRITON_INTERPRET=1 (no meaningful numbers)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.reset_probability <= 1.0:
        parser.error(f"--reset-probability must be in [0, 1], got {args.reset_probability}")
    if args.state_size <= 0:
        parser.error(f"--state-size must be positive, got {args.state_size}")
    if args.hidden_size <= 0:
        parser.error(f"--hidden-size must be positive, got {args.hidden_size}")
    if args.peak_gbps <= 0:
        parser.error(f"--peak-gbps must be positive, got {args.peak_gbps}")
    return args


@dataclasses.dataclass
class Row:
    kernel: str
    shape: str
    dtype: str
    impl: str
    direction: str
    milliseconds: float | None
    bytes_moved: int
    max_difference: float | None
    note: str = ""


def median_ms(function: Callable[[], object]) -> float:
    if DEVICE == "cpu":
        # One wall-clock run: the CPU mode only smoke-tests this script.
        started = time.perf_counter()
        function()
        return 1000 * (time.perf_counter() - started)
    import triton.testing

    return triton.testing.do_bench(function, return_mode="median")


def forward_and_backward(forward: Callable[[], tuple], leaves: list[torch.Tensor], upstream: list[torch.Tensor]) -> Callable[[], object]:
    """A closure running forward then the gradients of every leaf for fixed upstream gradients."""

    def run():
        outputs = forward()
        return torch.autograd.grad(outputs, leaves, upstream)

    return run


def time_impl(rows: list[Row], common: dict, impl: str, forward: Callable, leaves, upstream, bytes_forward: int,
              bytes_backward: int, difference: float | None, note: str = "") -> None:
    """Append the forward and forward+backward rows of one implementation (a row says so if it ran out of memory)."""
    for direction, function, traffic in (
        ("forward", lambda: forward(), bytes_forward),
        ("forward+backward", forward_and_backward(forward, leaves, upstream), bytes_forward + bytes_backward),
    ):
        try:
            milliseconds, row_note = median_ms(function), note
        except torch.cuda.OutOfMemoryError:
            milliseconds, row_note = None, "out of memory"
        torch.cuda.empty_cache()
        rows.append(Row(**common, impl=impl, direction=direction, milliseconds=milliseconds, bytes_moved=traffic,
                        max_difference=difference, note=row_note))


def max_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    return (value.detach().to(reference.dtype) - reference).abs().max().item()


def bench_linear_scan(rows: list[Row], shape: tuple[int, int, int], dtype: torch.dtype, reset_probability: float) -> None:
    batch_size, length, channels = shape
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    real = torch.float32 if dtype == torch.complex64 else dtype
    magnitude = 0.5 + 0.5 * torch.rand(shape, device=DEVICE, generator=generator)
    if dtype.is_complex:
        phase = 2 * torch.pi * torch.rand(shape, device=DEVICE, generator=generator)
        a = torch.polar(magnitude, phase)
    else:
        a = magnitude.to(real)
    b = torch.randn(shape, device=DEVICE, generator=generator, dtype=dtype)
    initial_state = torch.randn(batch_size, channels, device=DEVICE, generator=generator, dtype=dtype)
    reset = torch.rand(batch_size, length, device=DEVICE, generator=generator) < reset_probability
    leaves = [tensor.requires_grad_() for tensor in (a, b, initial_state)]
    upstream = [torch.randn_like(a), torch.randn_like(initial_state)]
    wide = WIDE[dtype]
    with torch.no_grad():
        reference, _ = linear_scan(a.to(wide), b.to(wide), reset, initial_state.to(wide), impl="naive")
    element = a.element_size()
    elements = a.numel()
    common = dict(kernel="linear_scan", shape=f"{batch_size}x{length}x{channels}", dtype=str(dtype).removeprefix("torch."))
    for impl in ("triton", "parallel", "naive"):
        def forward(impl=impl):
            return linear_scan(*leaves[:2], reset, leaves[2], impl=impl)

        with torch.no_grad():
            difference = max_difference(forward()[0], reference)
        time_impl(rows, common, impl, forward, leaves, upstream, 3 * elements * element + reset.numel(),
                  5 * elements * element + reset.numel(), difference)
    del reference
    # S4/S5's path: one decay per channel, read once per program (forward reads b, writes h;
    # backward reads h, dh and writes db).
    decay = a.detach()[0, 0].clone().requires_grad_()
    with torch.no_grad():
        reference, _ = linear_scan(decay.to(wide), b.to(wide), reset, initial_state.to(wide), impl="naive")

    def per_channel_forward():
        return linear_scan(decay, leaves[1], reset, leaves[2], impl="triton")

    with torch.no_grad():
        difference = max_difference(per_channel_forward()[0], reference)
    time_impl(rows, common, "triton-per-channel", per_channel_forward, [decay, *leaves[1:]], upstream,
              2 * elements * element + reset.numel(), 3 * elements * element + reset.numel(), difference,
              note="decay a [D] shared by every row and step (S4/S5)")
    del reference


def bench_selective_scan(rows: list[Row], shape: tuple[int, int, int], state_size: int, reset_probability: float) -> None:
    batch_size, length, channels = shape
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def normal(*size):
        return torch.randn(size, device=DEVICE, generator=generator)

    inputs = {
        "u": normal(batch_size, length, channels),
        "delta": torch.nn.functional.softplus(normal(batch_size, length, channels)),
        "A": -torch.exp(0.5 * normal(channels, state_size)),
        "B": normal(batch_size, length, state_size),
        "C": normal(batch_size, length, state_size),
        "D": normal(channels),
        "z": normal(batch_size, length, channels),
        "initial_state": normal(batch_size, channels, state_size),
    }
    reset = torch.rand(batch_size, length, device=DEVICE, generator=generator) < reset_probability
    leaves = [tensor.requires_grad_() for tensor in inputs.values()]
    upstream = [torch.randn_like(inputs["u"]), torch.randn_like(inputs["initial_state"])]
    with torch.no_grad():
        reference, _ = selective_scan(**{name: value.double() for name, value in inputs.items()}, reset=reset, impl="naive")
    element = inputs["u"].element_size()
    elements, state_elements = inputs["u"].numel(), inputs["B"].numel()
    common = dict(kernel="selective_scan", shape=f"{batch_size}x{length}x{channels}", dtype="float32")
    for impl in ("triton", "parallel", "naive"):
        def forward(impl=impl):
            return selective_scan(**inputs, reset=reset, impl=impl)

        with torch.no_grad():
            difference = max_difference(forward()[0], reference)
        time_impl(rows, common, impl, forward, leaves, upstream,
                  (4 * elements + 2 * state_elements) * element + reset.numel(),
                  (7 * elements + 2 * state_elements) * element + reset.numel(), difference, note=f"N = {state_size}")
    del reference


def bench_recurrent(rows: list[Row], kernel: str, shape: tuple[int, int], hidden_size: int, dtype: torch.dtype,
                    reset_probability: float) -> None:
    batch_size, length = shape
    gates = 4 if kernel == "lstm" else 3
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def normal(*size, scale=1.0):
        return (scale * torch.randn(size, device=DEVICE, generator=generator)).to(dtype).requires_grad_()

    x_proj = normal(batch_size, length, gates * hidden_size)
    weight_hh = normal(gates * hidden_size, hidden_size, scale=hidden_size**-0.5)
    bias = normal(gates * hidden_size, scale=0.1)
    reset = torch.rand(batch_size, length, device=DEVICE, generator=generator) < reset_probability
    states = [normal(batch_size, hidden_size, scale=0.5) for _ in range(2 if kernel == "lstm" else 1)]
    leaves = [x_proj, weight_hh, bias, *states]
    upstream = [torch.randn(batch_size, length, hidden_size, device=DEVICE, dtype=dtype)]
    upstream += [torch.randn(batch_size, hidden_size, device=DEVICE, dtype=dtype) for _ in states]

    def run(impl: str, tensors: list[torch.Tensor]):
        x, weight, bias_hh, *state = tensors
        if kernel == "lstm":
            h_seq, (h_final, c_final) = lstm_sequence(x, weight, bias_hh, reset, tuple(state), impl=impl)
            return h_seq, h_final, c_final
        return gru_sequence(x, weight, bias_hh, reset, state[0], impl=impl)

    with torch.no_grad():
        reference = run("naive", [leaf.to(torch.float64) for leaf in leaves])[0]
    element = x_proj.element_size()
    elements = batch_size * length * hidden_size
    if kernel == "lstm":
        bytes_forward, bytes_backward = elements * (5 * element + 4), elements * (10 * element + 4)
    else:
        bytes_forward, bytes_backward = 4 * elements * element, 9 * elements * element
    bytes_forward += reset.numel()
    bytes_backward += reset.numel()
    common = dict(kernel=kernel, shape=f"{batch_size}x{length}x{hidden_size}", dtype=str(dtype).removeprefix("torch."))
    for impl in ("triton", "naive"):
        def forward(impl=impl):
            return run(impl, leaves)

        with torch.no_grad():
            difference = max_difference(forward()[0], reference)
        time_impl(rows, common, impl, forward, leaves, upstream, bytes_forward, bytes_backward, difference)
    del reference

    module_type = torch.nn.LSTM if kernel == "lstm" else torch.nn.GRU
    cudnn = module_type(hidden_size, hidden_size, batch_first=True).to(device=DEVICE, dtype=dtype)
    inputs = torch.randn(batch_size, length, hidden_size, device=DEVICE, dtype=dtype, requires_grad=True)
    cudnn_state = tuple(state[None] for state in states) if kernel == "lstm" else states[0][None]

    def cudnn_forward():
        output, final = cudnn(inputs, cudnn_state)
        return (output, *final) if kernel == "lstm" else (output, final)

    cudnn_upstream = [upstream[0]] + [grad[None] for grad in upstream[1:]]
    time_impl(rows, common, "cudnn", cudnn_forward, [inputs, *cudnn.parameters(), *states], cudnn_upstream,
              bytes_forward, bytes_backward, None, note="no resets; includes the input projection")


def format_table(rows: list[Row], peak_gbps: float) -> str:
    triton_ms = {(row.kernel, row.shape, row.dtype, row.direction): row.milliseconds for row in rows if row.impl == "triton"}
    lines = [
        "| kernel | B x T x D | dtype | impl | pass | median ms | GB/s | % peak | time / triton | max abs diff | note |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.milliseconds is None:
            timing = ["-", "-", "-", "-"]
        else:
            gbps = row.bytes_moved / (row.milliseconds * 1e-3) / 1e9
            baseline = triton_ms.get((row.kernel, row.shape, row.dtype, row.direction))
            ratio = f"{row.milliseconds / baseline:.2f}x" if baseline else "-"
            timing = [f"{row.milliseconds:.3f}", f"{gbps:.0f}", f"{100 * gbps / peak_gbps:.1f}", ratio]
        difference = "n/a" if row.max_difference is None else f"{row.max_difference:.1e}"
        lines.append(
            f"| {row.kernel} | {row.shape} | {row.dtype} | {row.impl} | {row.direction} | " + " | ".join(timing) + f" | {difference} | {row.note} |"
        )
    return "\n".join(lines)


def git_commit() -> str:
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def report(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    import triton

    return "\n".join([
        "# Kernel benchmarks",
        "",
        f"- device: {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU (TRITON_INTERPRET=1 smoke test; not a measurement)'}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: {git_commit()}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}; "
        f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, matmul TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}",
        f"- reset probability {args.reset_probability}; peak bandwidth {args.peak_gbps:g} GB/s",
        f"- command: `{command}`",
        "",
        "GB/s = bytes the fused kernel moves (see scripts/bench_kernels.py) / median time, for every row.",
        "",
        format_table(rows, args.peak_gbps),
        "",
    ])


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    args = parse_args(argv)
    DEVICE = args.device
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("bench_kernels.py --device cpu needs TRITON_INTERPRET=1 (the Triton kernels run under the interpreter).", file=sys.stderr)
        return 2
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU and none is available here.", file=sys.stderr)
        return 2
    command = shlex.join([sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv])
    rows: list[Row] = []
    if "linear_scan" in args.kernels:
        for shape in args.scan_shapes:
            for dtype_name in args.scan_dtypes:
                bench_linear_scan(rows, shape, DTYPES[dtype_name], args.reset_probability)
                print(format_table(rows[-8:], args.peak_gbps), flush=True)
    if "selective_scan" in args.kernels:
        for shape in args.ssm_shapes:
            bench_selective_scan(rows, shape, args.state_size, args.reset_probability)
            print(format_table(rows[-6:], args.peak_gbps), flush=True)
    for kernel in ("lstm", "gru"):
        if kernel in args.kernels:
            for shape in args.rnn_shapes:
                bench_recurrent(rows, kernel, shape, args.hidden_size, DTYPES[args.rnn_dtype], args.reset_probability)
                print(format_table(rows[-6:], args.peak_gbps), flush=True)
    write_atomically(args.output, report(rows, args, command))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

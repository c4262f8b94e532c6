"""Compile every Triton kernel of kernels/ ahead of time for NVIDIA GPUs, on a machine without one.

    python -m scripts.kernels_compile                  # every configuration, sm_90a and sm_80
    python -m scripts.kernels_compile --defaults-only  # the configurations production shapes use

Triton ships ptxas, so `triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget(...))`
builds PTX and a cubin for any CUDA architecture on the CPU. The configurations are the ones the
dispatch in kernels/*/triton.py can choose: every supported dtype, every (block size, chunk,
warps) its launch-config functions return for some input shape, real/complex, with and without the
optional inputs (bias, D, z), per-channel or per-step decays. Registers, local memory (register
spills) and shared memory come from the cubin (cuobjdump --dump-resource-usage, which Triton also
ships) and Triton's metadata. The table goes to --output with date, commit, triton version and
this command. Must run without TRITON_INTERPRET (the interpreter replaces compilation).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {"sm_90a": 90, "sm_80": 80}
# Triton's names for the pointer element types of each torch storage dtype.
POINTER_TYPES = {
    "float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "float64": "*fp64",
    "complex64": "*fp32", "complex128": "*fp64",
}


@dataclasses.dataclass(frozen=True)
class Build:
    """One kernel in one launch configuration."""

    op: str
    kernel: object  # a triton JITFunction
    dtype: str  # storage dtype of the floating tensors (a complex dtype is passed as its float view)
    constexprs: dict
    num_warps: int
    num_stages: int | None
    default: bool  # a configuration the production shapes use: must compile without spills
    pointer_overrides: dict = dataclasses.field(default_factory=dict)  # argument -> pointer type

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def label(self) -> str:
        shown = {key: getattr(value, "name", value) for key, value in self.constexprs.items()
                 if key not in ("ACC", "DOT_PRECISION")}
        return " ".join(f"{key}={value}" for key, value in shown.items()) + f" warps={self.num_warps}"

    def signature(self) -> dict[str, str]:
        """Argument name -> Triton type: constexpr, a pointer type, or i32 for sizes."""
        types = {}
        for parameter in self.kernel.params:
            if parameter.is_constexpr:
                types[parameter.name] = "constexpr"
            elif parameter.name.endswith("_ptr"):
                types[parameter.name] = self.pointer_overrides.get(parameter.name, POINTER_TYPES[self.dtype])
            else:
                types[parameter.name] = "i32"
        return types


@dataclasses.dataclass
class Result:
    build: Build
    architecture: str
    registers: int | None = None
    local_bytes: int | None = None  # per thread: register spills (no kernel uses local arrays)
    shared_bytes: int | None = None
    error: str | None = None


def power_of_two_range(low: int, high: int) -> list[int]:
    return [1 << exponent for exponent in range(low.bit_length() - 1, high.bit_length())]


def linear_scan_builds() -> list[Build]:
    import torch

    from kernels.linear_scan import triton as module

    builds = []
    for dtype in module.SUPPORTED_DTYPES:
        is_complex = dtype.is_complex
        configs = {module._launch_config(batch, channels, is_complex)
                   for batch in power_of_two_range(1, 1 << 16) for channels in power_of_two_range(1, 1 << 14)}
        for chunk_t, block_d in sorted(configs):
            for per_channel in (False, True):
                default = dtype in (torch.float32, torch.complex64) and block_d == 64
                constexprs = dict(IS_COMPLEX=is_complex, DECAY_PER_CHANNEL=per_channel, ACC=module._accumulator(dtype),
                                  CHUNK_T=chunk_t, BLOCK_D=block_d)
                for kernel in (module.linear_scan_fwd_kernel, module.linear_scan_bwd_kernel):
                    builds.append(Build("linear_scan", kernel, str(dtype)[6:], constexprs, 4, None, default,
                                        {"reset_ptr": "*u8"}))
    return builds


def selective_scan_builds() -> list[Build]:
    from kernels.selective_scan import triton as module

    builds = []
    fp32 = {name: "*fp32" for name in ("chunk_state_ptr",)}
    for kernel, tile_elements in ((module.selective_scan_fwd_kernel, module.FORWARD_TILE_ELEMENTS),
                                  (module.selective_scan_bwd_kernel, module.BACKWARD_TILE_ELEMENTS)):
        configs = {module._launch_config(channels, state_size, tile_elements)
                   for channels in power_of_two_range(1, 1 << 13) for state_size in range(1, module.MAX_STATE_SIZE + 1)}
        for block_d, block_n in sorted(configs):
            for has_d, has_z in ((True, True), (True, False), (False, True), (False, False)):
                # Mamba passes D and z; the other combinations are compiled at its default state size only.
                if (has_d, has_z) != (True, True) and block_n != 16:
                    continue
                default = has_d and has_z and block_n == 16 and block_d == tile_elements // (module.CHUNK_T * block_n)
                constexprs = dict(HAS_D=has_d, HAS_Z=has_z, CHUNK_T=module.CHUNK_T, BLOCK_D=block_d, BLOCK_N=block_n)
                builds.append(Build("selective_scan", kernel, "float32", constexprs, 4, None, default,
                                    {"reset_ptr": "*u8", **fp32}))
    return builds


def recurrent_builds(op: str) -> list[Build]:
    """The whole-sequence kernels at every padded H up to WHOLE_SEQUENCE_MAX_HIDDEN of their
    direction (resident or streamed weights as the dispatch picks) and the per-step split kernels
    (one configuration for every larger H). The defaults are what the backbones run: float32 at
    H = 16 to 512, the LSTM without the recurrent bias (memory/lstm.py folds it into the input
    projection), the GRU with it."""
    import torch

    from kernels.lstm import triton as lstm

    if op == "lstm":
        kernels = (("forward", lstm.lstm_fwd_kernel, 4), ("backward", lstm.lstm_bwd_kernel, 8))
        step_kernels = (lstm.lstm_fwd_step_kernel, lstm.lstm_bwd_step_kernel)
        overrides = {"reset_ptr": "*u8", "c_seq_ptr": "*fp32", "grad_c_carry_ptr": "*fp32"}
    else:
        from kernels.gru import triton as gru

        kernels = (("forward", gru.gru_fwd_kernel, 3), ("backward", gru.gru_bwd_kernel, 6))
        step_kernels = (gru.gru_fwd_step_kernel, gru.gru_bwd_step_kernel)
        overrides = {"reset_ptr": "*u8", "grad_h_carry_ptr": "*fp32"}
    builds = []
    for dtype in lstm.SUPPORTED_DTYPES:
        for has_bias in (True, False):
            default = dtype == torch.float32 and has_bias == (op == "gru")
            for direction, kernel, square_tiles in kernels:
                for block_h in power_of_two_range(lstm.block_hidden(1), lstm.WHOLE_SEQUENCE_MAX_HIDDEN[direction]):
                    launch = lstm.whole_sequence_launch(kernel.fn.__name__, block_h)
                    constexprs = dict(
                        HAS_BIAS=has_bias, WEIGHT_RESIDENT=lstm.weight_resident(block_h, dtype, square_tiles),
                        DOT_PRECISION=lstm.DOT_PRECISION, ACC=lstm.ACCUMULATOR, BLOCK_B=lstm.BLOCK_B,
                        BLOCK_H=block_h, BLOCK_K=launch["BLOCK_K"],
                    )
                    builds.append(Build(op, kernel, str(dtype)[6:], constexprs, launch["num_warps"], 1, default,
                                        overrides))
            step_config = dict(lstm.STEP_KERNEL_CONFIG)
            num_warps, num_stages = step_config.pop("num_warps"), step_config.pop("num_stages")
            for kernel in step_kernels:
                builds.append(Build(op, kernel, str(dtype)[6:], dict(HAS_BIAS=has_bias, **step_config), num_warps,
                                    num_stages, default, overrides))
    return builds


def all_builds() -> list[Build]:
    return linear_scan_builds() + selective_scan_builds() + recurrent_builds("lstm") + recurrent_builds("gru")


RESOURCE_LINE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def compile_build(build: Build, architecture: str) -> Result:
    """Compile one configuration for one architecture and read its resource usage from the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = Result(build, architecture)
    options = {"num_warps": build.num_warps}
    if build.num_stages is not None:
        options["num_stages"] = build.num_stages
    try:
        source = ASTSource(build.kernel, build.signature(), constexprs=dict(build.constexprs))
        compiled = triton.compile(source, target=GPUTarget("cuda", ARCHITECTURES[architecture], 32), options=options)
    except Exception as error:  # noqa: BLE001 - every compile failure is a result to report
        result.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        return result
    from triton import knobs

    with tempfile.TemporaryDirectory() as directory:
        cubin = Path(directory) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
    match = RESOURCE_LINE.search(usage)
    if match is None:
        result.error = f"no resource usage in cuobjdump output: {usage.strip()[:200]}"
        return result
    registers, stack, static_shared, local = map(int, match.groups())
    result.registers = registers
    result.local_bytes = max(local, stack)
    result.shared_bytes = static_shared + compiled.metadata.shared
    return result


def format_table(results: list[Result]) -> str:
    lines = [
        "| op | kernel | arch | dtype | configuration | default | registers | spills (B/thread) | shared memory (KB) | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        build = result.build
        if result.error:
            numbers = ["-", "-", "-", f"FAILED: {result.error}"]
        else:
            numbers = [str(result.registers), str(result.local_bytes), f"{result.shared_bytes / 1024:.1f}", "ok"]
        lines.append(f"| {build.op} | {build.name} | {result.architecture} | {build.dtype} | {build.label()} | "
                     f"{'yes' if build.default else ''} | " + " | ".join(numbers) + " |")
    return "\n".join(lines)


def failures(results: list[Result]) -> list[str]:
    """What a CI check rejects: any compile error, and any spill in a default configuration."""
    problems = []
    for result in results:
        where = f"{result.build.name} [{result.build.dtype} {result.build.label()}] on {result.architecture}"
        if result.error:
            problems.append(f"{where} failed to compile: {result.error}")
        elif result.build.default and result.local_bytes > 0:
            problems.append(f"{where} spills {result.local_bytes} bytes per thread (a default configuration must not spill)")
    return problems


def report(results: list[Result], command: str) -> str:
    import torch
    import triton

    from scripts.bench_kernels import git_commit

    failed = sum(result.error is not None for result in results)
    spilling = sum(bool(result.local_bytes) for result in results)
    return "\n".join([
        "# Triton kernels compiled ahead of time (no GPU needed)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: {git_commit()}",
        f"- triton {triton.__version__}, torch {torch.__version__}; compiled on the CPU with Triton's bundled ptxas",
        f"- command: `{command}`",
        f"- {len(results)} builds: {failed} failed to compile, {spilling} spill registers to local memory",
        "",
        "Configurations are those the dispatch in kernels/*/triton.py can launch (see scripts/kernels_compile.py);",
        "`default` marks the ones production shapes use, which CI (tests/kernels/test_compile.py) requires to",
        "compile without any spill.",
        "Registers are per thread (255 at most); spills are local-memory bytes per",
        "thread; shared memory is per program (static + Triton's dynamic allocation; sm_90a allows 227 KB,",
        "sm_80 163 KB).",
        "",
        format_table(results),
        "",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHITECTURES), default=sorted(ARCHITECTURES, reverse=True),
                        help="target architectures")
    parser.add_argument("--ops", nargs="+", choices=("linear_scan", "selective_scan", "lstm", "gru"),
                        default=["linear_scan", "selective_scan", "lstm", "gru"], help="ops whose kernels to compile")
    parser.add_argument("--defaults-only", action="store_true", help="only the configurations production shapes use")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "kernels_compile.md",
                        help="markdown file to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels_compile needs TRITON_INTERPRET unset: the interpreter replaces compilation.", file=sys.stderr)
        return 2
    builds = [build for build in all_builds() if build.op in args.ops and (build.default or not args.defaults_only)]
    results = []
    for architecture in args.arch:
        for build in builds:
            result = compile_build(build, architecture)
            results.append(result)
            print(format_table([result]).splitlines()[-1], flush=True)
    command = shlex.join(["python", "-m", "scripts.kernels_compile", *(sys.argv[1:] if argv is None else argv)])
    from scripts.bench_kernels import write_atomically

    write_atomically(args.output, report(results, command))
    problems = failures(results)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU kernels in C++ (this folder's *.cpp), compiled on first use with the system's C++ compiler.

On a CPU the hot loops of some backbones (Mamba's selective scan, S4's episode-masked convolution, the
same-episode depthwise conv of Mamba, Mamba-2 and Gated DeltaNet) are element-wise work on tensors that a
chain of PyTorch ops streams through memory many times per step; one fused loop per step does it in one
pass. Each source is compiled once per machine into `$MEMRL_NATIVE_CACHE` (default
`~/.cache/memrl/native`), under a name that hashes the source, the folder's headers and the flags, with
`-O3 -ffast-math` (reassociated sums, so that the loops vectorise) and `-fopenmp`; the shared
library is linked without -ffast-math, so loading it leaves the process's floating-point modes alone. Its
OpenMP calls bind to the libgomp already in the process, torch's, so its parallel loops run on torch's
intra-op threads.

`library(name)` returns the loaded library, or None where it cannot be had: no compiler, a failed
build, or `MEMRL_NATIVE=0` (which turns these kernels off, e.g. to compare against the PyTorch paths).
`unavailable_reason(name)` then says why. Callers keep their PyTorch path as the fallback.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).parent
DTYPES = {torch.float32: "f32", torch.float64: "f64"}  # every kernel comes in these two, named memrl_<op>_<suffix>
_failures: dict[str, str] = {}


def _compile_flags() -> list[str]:
    flags = ["-O3", "-ffast-math", "-fPIC", "-std=c++17", "-fopenmp"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def _cache_dir() -> Path:
    return Path(os.environ.get("MEMRL_NATIVE_CACHE") or Path.home() / ".cache" / "memrl" / "native")


def _build(name: str) -> Path:
    """Compile `<name>.cpp` into the cache (atomically: a half-written library is never loaded) -> its path."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    source = SOURCE_DIR / f"{name}.cpp"
    flags = _compile_flags()
    headers = b"".join(header.read_bytes() for header in sorted(SOURCE_DIR.glob("*.h")))
    digest = hashlib.sha256(source.read_bytes() + headers + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"{name}-{digest}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        objects, shared = Path(work) / f"{name}.o", Path(work) / f"{name}.so"
        for command in ([compiler, *flags, "-c", str(source), "-o", str(objects)],
                        [compiler, "-shared", "-fopenmp", str(objects), "-o", str(shared), "-lm"]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
        os.replace(shared, target)
    return target


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The compiled `<name>.cpp`, or None (see `unavailable_reason`)."""
    if os.environ.get("MEMRL_NATIVE", "1") == "0":
        _failures[name] = "MEMRL_NATIVE=0 turns the native CPU kernels off"
        return None
    try:
        return ctypes.CDLL(str(_build(name)))
    except (OSError, RuntimeError) as error:
        _failures[name] = f"the native CPU kernel {name} is unavailable: {error}"
        return None


def unavailable_reason(name: str) -> str | None:
    """Why `library(name)` is None, or None when it loads."""
    return None if library(name) is not None else _failures[name]


def function(name: str, op: str, dtype: torch.dtype):
    """The entry point `memrl_<op>_<f32|f64>` of library `name` (which must load) for `dtype`."""
    return getattr(library(name), f"memrl_{op}_{DTYPES[dtype]}")


IMPLEMENTATIONS = ("auto", "native", "torch")  # the `impl` choices of an op with a native kernel and a torch path


def use_native(name: str, impl: str, *tensors: torch.Tensor) -> bool:
    """Whether an op runs library `name`'s kernel on `tensors` for `impl`: "native" (a ValueError naming what
    stops it where it cannot run), "auto" (where the tensors are float32/float64 CPU tensors of one dtype and
    the library builds) or "torch" (never)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    first = tensors[0]
    fits = first.dtype in DTYPES and all(t.device.type == "cpu" and t.dtype == first.dtype for t in tensors)
    if impl == "native" and not fits:
        raise ValueError(f"impl='native' takes float32 or float64 CPU tensors of one dtype, got {first.dtype} "
                         f"on {first.device}")
    if impl == "native" and library(name) is None:
        raise ValueError(f"impl='native': {unavailable_reason(name)}")
    return impl != "torch" and fits and library(name) is not None


def native_step_fits(name: str, u: torch.Tensor, parameter: torch.Tensor) -> bool:
    """Whether a backbone's C++ rollout step (library `name`) may run: nothing needs a gradient (it has no
    backward), `u` is a float32/float64 CPU tensor of the parameters' dtype, and the library builds here."""
    return not torch.is_grad_enabled() and use_native(name, "auto", u, parameter)


def pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    """The address of a contiguous CPU tensor's data (NULL for None)."""
    return ctypes.c_void_p(None if tensor is None else tensor.data_ptr())

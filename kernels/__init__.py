"""Fused ops for memrl's backbones, each in its own folder beside its pure-PyTorch reference.

Imports nothing else of memrl's. Each op exposes one public function with
`impl="auto" | "triton" | "naive"` (plus, where it exists, "parallel": a log-depth torch
version used on the CPU).
"""

from __future__ import annotations

import functools
import importlib
import types


@functools.cache
def triton_kernels(package: str) -> types.ModuleType | None:
    """`<package>.triton`, or None where triton cannot be imported (imported lazily, so every op
    package loads on machines without triton)."""
    try:
        return importlib.import_module(f"{package}.triton")
    except ImportError:
        return None

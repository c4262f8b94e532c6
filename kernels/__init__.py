"""Fused ops for memrl's backbones, each in its own folder beside its pure-PyTorch reference.

Imports nothing else of memrl's. Each op exposes one public function with
`impl="auto" | "triton" | "naive"` (plus, where they exist, "parallel": a log-depth torch
version, and "native": a C++ loop for the CPU from `kernels/native`, compiled on first use).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types

import torch


@functools.cache
def triton_kernels(package: str) -> types.ModuleType | None:
    """`<package>.triton`, or None where triton cannot be imported (imported lazily, so every op
    package loads on machines without triton)."""
    try:
        return importlib.import_module(f"{package}.triton")
    except ImportError:
        return None


def device_guard(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context to launch a kernel on `tensor`'s device in: `torch.cuda.device` for CUDA tensors
    (Triton launches on the current device, so without it a cuda:1 tensor would be handed to a
    kernel running on cuda:0), nothing for CPU tensors under the interpreter."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()

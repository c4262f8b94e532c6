"""Resettable diagonal linear recurrence h_t = a_t * (0 if reset_t else h_{t-1}) + b_t."""

from __future__ import annotations

import types

import torch

from kernels import triton_kernels
from kernels.linear_scan.naive import linear_scan_naive
from kernels.linear_scan.parallel import linear_scan_parallel

IMPLEMENTATIONS = ("auto", "naive", "parallel", "triton")


def _triton_module() -> types.ModuleType | None:
    """This op's Triton kernels, or None where triton cannot be imported."""
    return triton_kernels(__name__)


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    reset: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resettable linear scan over time.

    a, b: [B, T, *S], real or complex, same dtype; reset: bool [B, T] (True where a new
    episode starts: the carried state is dropped to zero before step t); initial_state:
    [B, *S] or None (zeros). Returns (h [B, T, *S], final state h[:, -1] [B, *S]).
    impl: "auto" (Triton for CUDA tensors of a dtype it supports when triton imports, else
    "parallel"), "triton" (fused kernel; CUDA, or CPU under TRITON_INTERPRET=1), "parallel"
    (log-depth torch), "naive" (Python loop reference).
    """
    if a.shape != b.shape or a.dim() < 3 or a.dtype != b.dtype:
        raise ValueError(
            f"a and b must share one dtype and a shape [B, T, ...], got {a.dtype}{tuple(a.shape)} "
            f"and {b.dtype}{tuple(b.shape)}"
        )
    if reset.dtype != torch.bool or tuple(reset.shape) != tuple(a.shape[:2]):
        raise ValueError(f"reset must be bool [B, T] = {tuple(a.shape[:2])}, got {reset.dtype}{tuple(reset.shape)}")
    if initial_state is None:
        initial_state = torch.zeros_like(a[:, 0])
    elif tuple(initial_state.shape) != (a.shape[0], *a.shape[2:]):
        raise ValueError(
            f"initial_state must be [B, ...] = {(a.shape[0], *a.shape[2:])}, got {tuple(initial_state.shape)}"
        )
    if a.shape[1] == 0:
        raise ValueError("linear_scan needs at least one time step, got T = 0")
    if impl == "naive":
        return linear_scan_naive(a, b, reset, initial_state)
    if impl == "auto":
        triton_module = _triton_module() if a.is_cuda else None
        if triton_module is not None and a.dtype in triton_module.SUPPORTED_DTYPES and initial_state.dtype == a.dtype:
            return triton_module.linear_scan_triton(a, b, reset, initial_state)
        return linear_scan_parallel(a, b, reset, initial_state)
    if impl == "parallel":
        return linear_scan_parallel(a, b, reset, initial_state)
    if impl == "triton":
        triton_module = _triton_module()
        if triton_module is None:
            raise ValueError("impl='triton' needs the triton package, which cannot be imported here")
        return triton_module.linear_scan_triton(a, b, reset, initial_state)
    raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


__all__ = ["linear_scan", "linear_scan_naive", "linear_scan_parallel"]

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

    a: [B, T, *S], or [*S] for a decay shared by every batch row and step (per channel: S4/S5's
    discretised eigenvalues, never expanded to [B, T, *S] by the Triton kernel); b: [B, T, *S],
    real or complex, a's dtype; reset: bool [B, T] (True where a new episode starts: the carried
    state is dropped to zero before step t); initial_state: [B, *S] or None (zeros). Returns
    (h [B, T, *S], final state h[:, -1] [B, *S]); gradients flow to a in a's own shape.
    impl: "auto" (Triton for CUDA tensors of a dtype it supports when triton imports, else
    "parallel"), "triton" (fused kernel; CUDA, or CPU under TRITON_INTERPRET=1), "parallel"
    (log-depth torch), "naive" (Python loop reference).
    """
    if b.dim() < 3 or a.dtype != b.dtype or tuple(a.shape) not in (tuple(b.shape), tuple(b.shape[2:])):
        raise ValueError(
            f"b must be [B, T, ...] and a share its dtype with the shape of b or of its trailing [...] "
            f"(a per-channel decay), got a {a.dtype}{tuple(a.shape)} and b {b.dtype}{tuple(b.shape)}"
        )
    if reset.dtype != torch.bool or tuple(reset.shape) != tuple(b.shape[:2]):
        raise ValueError(f"reset must be bool [B, T] = {tuple(b.shape[:2])}, got {reset.dtype}{tuple(reset.shape)}")
    if initial_state is None:
        initial_state = torch.zeros_like(b[:, 0])
    elif tuple(initial_state.shape) != (b.shape[0], *b.shape[2:]):
        raise ValueError(
            f"initial_state must be [B, ...] = {(b.shape[0], *b.shape[2:])}, got {tuple(initial_state.shape)}"
        )
    if b.shape[1] == 0:
        raise ValueError("linear_scan needs at least one time step, got T = 0")
    if impl == "naive":
        return linear_scan_naive(a.expand_as(b), b, reset, initial_state)
    if impl == "auto":
        triton_module = _triton_module() if b.is_cuda else None
        if triton_module is not None and b.dtype in triton_module.SUPPORTED_DTYPES and initial_state.dtype == b.dtype:
            return triton_module.linear_scan_triton(a, b, reset, initial_state)
        return linear_scan_parallel(a.expand_as(b), b, reset, initial_state)
    if impl == "parallel":
        return linear_scan_parallel(a.expand_as(b), b, reset, initial_state)
    if impl == "triton":
        triton_module = _triton_module()
        if triton_module is None:
            raise ValueError("impl='triton' needs the triton package, which cannot be imported here")
        return triton_module.linear_scan_triton(a, b, reset, initial_state)
    raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


__all__ = ["linear_scan", "linear_scan_naive", "linear_scan_parallel"]

"""GRU over a sequence with resets: fused Triton kernel beside its loop reference."""

from __future__ import annotations

import types

import torch

from kernels import triton_kernels
from kernels.gru.naive import gru_sequence_naive
from kernels.lstm import fused_kernel_applies

IMPLEMENTATIONS = ("auto", "naive", "triton")


def _triton_module() -> types.ModuleType | None:
    """This op's Triton kernels, or None where triton cannot be imported."""
    return triton_kernels(__name__)


def gru_sequence(
    x_proj: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a GRU cell over T steps, dropping the state to zero where an episode starts.

    x_proj: [B, T, 3H], the input projection x W_ih^T + b_ih of every step (gates r, z, n,
    PyTorch's order); weight_hh: [3H, H]; bias: b_hh [3H] or None (its n part sits inside
    r * (W_hn h + b_hn), as in torch.nn.GRU); reset: bool [B, T], True where x[b, t] starts an
    episode (h is zeroed before step t); initial_state: h [B, H] or None (zeros).
    Returns (h_seq [B, T, H], h_T [B, H]).
    impl: "auto" (Triton for CUDA tensors it supports when triton imports, else "naive", with a
    RuntimeWarning for CUDA tensors it cannot take: see `kernels.lstm.fused_kernel_applies`),
    "triton" (fused kernel; CUDA, or CPU under TRITON_INTERPRET=1), "naive" (Python loop).
    """
    if x_proj.dim() != 3 or x_proj.shape[-1] % 3 != 0:
        raise ValueError(f"x_proj must be [B, T, 3H], got {tuple(x_proj.shape)}")
    batch_size, length, three_hidden = x_proj.shape
    hidden_size = three_hidden // 3
    if tuple(weight_hh.shape) != (three_hidden, hidden_size):
        raise ValueError(f"weight_hh must be [3H, H] = {(three_hidden, hidden_size)}, got {tuple(weight_hh.shape)}")
    if bias is not None and tuple(bias.shape) != (three_hidden,):
        raise ValueError(f"bias must be [3H] = ({three_hidden},) or None, got {tuple(bias.shape)}")
    if reset.dtype != torch.bool or tuple(reset.shape) != (batch_size, length):
        raise ValueError(f"reset must be bool [B, T] = {(batch_size, length)}, got {reset.dtype}{tuple(reset.shape)}")
    if length == 0:
        raise ValueError("gru_sequence needs at least one time step, got T = 0")
    if initial_state is None:
        initial_state = x_proj.new_zeros(batch_size, hidden_size)
    if tuple(initial_state.shape) != (batch_size, hidden_size):
        raise ValueError(f"initial_state must be [B, H] = {(batch_size, hidden_size)}, got {tuple(initial_state.shape)}")
    tensors = (weight_hh, initial_state) + (() if bias is None else (bias,))
    if any(tensor.dtype != x_proj.dtype for tensor in tensors):
        raise ValueError(f"weight_hh, bias and initial_state must have the dtype of x_proj ({x_proj.dtype})")
    if impl == "naive":
        return gru_sequence_naive(x_proj, weight_hh, bias, reset, initial_state)
    if impl == "auto":
        triton_module = _triton_module() if x_proj.is_cuda else None
        if not fused_kernel_applies("gru", triton_module, x_proj.is_cuda, x_proj.dtype):
            return gru_sequence_naive(x_proj, weight_hh, bias, reset, initial_state)
        return triton_module.gru_sequence_triton(x_proj, weight_hh, bias, reset, initial_state)
    if impl == "triton":
        triton_module = _triton_module()
        if triton_module is None:
            raise ValueError("impl='triton' needs the triton package, which cannot be imported here")
        return triton_module.gru_sequence_triton(x_proj, weight_hh, bias, reset, initial_state)
    raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


__all__ = ["gru_sequence", "gru_sequence_naive"]

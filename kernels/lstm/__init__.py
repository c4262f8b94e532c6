"""LSTM over a sequence with resets: fused Triton kernel beside its loop reference."""

from __future__ import annotations

import types
import warnings

import torch

from kernels import triton_kernels
from kernels.lstm.naive import lstm_sequence_naive

IMPLEMENTATIONS = ("auto", "naive", "triton")


def _triton_module() -> types.ModuleType | None:
    """This op's Triton kernels, or None where triton cannot be imported."""
    return triton_kernels(__name__)


def fused_kernel_applies(op_name: str, triton_module: types.ModuleType | None, is_cuda: bool, dtype: torch.dtype) -> bool:
    """Whether impl="auto" runs a fused recurrent kernel (lstm or gru): CUDA tensors of a supported
    dtype (any hidden size). A CUDA call it cannot take warns that the Python step loop runs
    instead, so a slow fallback is never silent."""
    if triton_module is None or not is_cuda:
        return False
    if dtype in triton_module.SUPPORTED_DTYPES:
        return True
    warnings.warn(
        f"{op_name}_sequence: dtype {dtype} is not one of {triton_module.SUPPORTED_DTYPES}, so impl='auto' runs the "
        "Python step loop on CUDA (one cell call per step)",
        RuntimeWarning, stacklevel=3,
    )
    return False


def lstm_sequence(
    x_proj: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Run an LSTM cell over T steps, dropping the state to zero where an episode starts.

    x_proj: [B, T, 4H], the input projection x W_ih^T + b_ih of every step (gates i, f, g, o,
    PyTorch's order); weight_hh: [4H, H]; bias: [4H] added to the recurrent term, or None;
    reset: bool [B, T], True where x[b, t] starts an episode ((h, c) are zeroed before step t);
    initial_state: (h, c), [B, H] each, or None (zeros).
    Returns (h_seq [B, T, H], (h_T, c_T)).
    impl: "auto" (Triton for CUDA tensors it supports when triton imports, else "naive", with a
    RuntimeWarning for CUDA tensors it cannot take: see `fused_kernel_applies`),
    "triton" (fused kernel; CUDA, or CPU under TRITON_INTERPRET=1), "naive" (Python loop).
    """
    if x_proj.dim() != 3 or x_proj.shape[-1] % 4 != 0:
        raise ValueError(f"x_proj must be [B, T, 4H], got {tuple(x_proj.shape)}")
    batch_size, length, four_hidden = x_proj.shape
    hidden_size = four_hidden // 4
    if tuple(weight_hh.shape) != (four_hidden, hidden_size):
        raise ValueError(f"weight_hh must be [4H, H] = {(four_hidden, hidden_size)}, got {tuple(weight_hh.shape)}")
    if bias is not None and tuple(bias.shape) != (four_hidden,):
        raise ValueError(f"bias must be [4H] = ({four_hidden},) or None, got {tuple(bias.shape)}")
    if reset.dtype != torch.bool or tuple(reset.shape) != (batch_size, length):
        raise ValueError(f"reset must be bool [B, T] = {(batch_size, length)}, got {reset.dtype}{tuple(reset.shape)}")
    if length == 0:
        raise ValueError("lstm_sequence needs at least one time step, got T = 0")
    if initial_state is None:
        zeros = x_proj.new_zeros(batch_size, hidden_size)
        initial_state = (zeros, zeros)
    if len(initial_state) != 2 or any(tuple(state.shape) != (batch_size, hidden_size) for state in initial_state):
        raise ValueError(
            f"initial_state must be (h, c), each [B, H] = {(batch_size, hidden_size)}, "
            f"got {[tuple(state.shape) for state in initial_state]}"
        )
    tensors = (weight_hh, *initial_state) + (() if bias is None else (bias,))
    if any(tensor.dtype != x_proj.dtype for tensor in tensors):
        raise ValueError(f"weight_hh, bias and initial_state must have the dtype of x_proj ({x_proj.dtype})")
    if impl == "naive":
        return lstm_sequence_naive(x_proj, weight_hh, bias, reset, initial_state)
    if impl == "auto":
        triton_module = _triton_module() if x_proj.is_cuda else None
        if not fused_kernel_applies("lstm", triton_module, x_proj.is_cuda, x_proj.dtype):
            return lstm_sequence_naive(x_proj, weight_hh, bias, reset, initial_state)
        return triton_module.lstm_sequence_triton(x_proj, weight_hh, bias, reset, initial_state)
    if impl == "triton":
        triton_module = _triton_module()
        if triton_module is None:
            raise ValueError("impl='triton' needs the triton package, which cannot be imported here")
        return triton_module.lstm_sequence_triton(x_proj, weight_hh, bias, reset, initial_state)
    raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


__all__ = ["lstm_sequence", "lstm_sequence_naive"]

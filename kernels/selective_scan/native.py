"""Selective scan for the CPU in C++ (`kernels/native/selective_scan.cpp`): same contract as `sequential.py`.

Per batch row and step, one loop over the [N, D] state does the decay, the update and the output
(exp, two multiply-adds and a product for C): one pass where the PyTorch loop makes five forward and
ten backward. The forward pass keeps the state entering each chunk of CHUNK steps (not every state);
the backward pass recomputes a chunk's states and decays from it, then runs the chunk backwards.
Batch rows are split over torch's OpenMP threads when the work pays for waking them. float32 and float64.
"""

from __future__ import annotations

import ctypes

import torch

from kernels.native import function, library, pointer

CHUNK = 16
MIN_WORK_PER_THREAD = 1 << 18  # state updates (rows x steps x D x N) that pay for waking one more thread


def available() -> bool:
    return library("selective_scan") is not None


def _int(value: int) -> ctypes.c_int64:
    return ctypes.c_int64(value)


def _threads(rows: int, work_per_row: int) -> ctypes.c_int64:
    """torch's thread count, fewer where a thread would get under MIN_WORK_PER_THREAD state updates."""
    return _int(max(1, min(torch.get_num_threads(), rows * work_per_row // MIN_WORK_PER_THREAD)))


class _NativeSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, reset, initial_state):
        batch_size, length, channels = u.shape
        state_size = A.shape[1]
        u, delta, B, C, initial_state = (x.contiguous() for x in (u, delta, B, C, initial_state))
        A_transposed = A.T.contiguous()
        keep = (~reset).to(u.dtype).contiguous()
        chunks = -(-length // CHUNK)
        y = torch.empty_like(u)
        checkpoints = u.new_empty(batch_size, chunks, state_size, channels)
        final_state = torch.empty_like(initial_state)
        sizes = [_int(batch_size), _int(length), _int(channels), _int(state_size), _int(CHUNK)]
        arrays = [pointer(x) for x in (u, delta, A_transposed, B, C, keep, initial_state, y, checkpoints, final_state)]
        function("selective_scan", "selective_scan_forward", u.dtype)(
            _threads(batch_size, length * channels * state_size), *sizes, *arrays)
        ctx.save_for_backward(u, delta, A_transposed, B, C, keep, checkpoints)
        return y, final_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_final):
        u, delta, A_transposed, B, C, keep, checkpoints = ctx.saved_tensors
        batch_size, length, channels = u.shape
        state_size = A_transposed.shape[0]
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.contiguous()
        grad_final = None if grad_final is None else grad_final.contiguous()
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_initial = u.new_empty(batch_size, channels, state_size)
        grad_A_transposed = torch.zeros_like(A_transposed)
        arrays = [pointer(x) for x in (u, delta, A_transposed, B, C, keep, checkpoints, grad_y, grad_final, grad_u,
                                       grad_delta, grad_A_transposed, grad_B, grad_C, grad_initial)]
        sizes = [_int(batch_size), _int(length), _int(channels), _int(state_size), _int(CHUNK)]
        function("selective_scan", "selective_scan_backward", u.dtype)(
            _threads(batch_size, length * channels * state_size), *sizes, *arrays)
        grad_A = grad_A_transposed.T
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None, grad_initial


def selective_scan_native(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    reset: torch.Tensor,
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u, delta [B, T, D]; A [D, N]; B, C [B, T, N]; reset bool [B, T]; initial_state [B, D, N], all on the
    CPU in float32 or float64 -> (sum_n C_t h_t [B, T, D], final state [B, D, N]), without the D skip and
    the z gate. Needs `available()`."""
    return _NativeSelectiveScan.apply(u, delta, A, B, C, reset, initial_state)

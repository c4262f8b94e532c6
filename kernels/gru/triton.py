"""Fused Triton GRU over a sequence, with resets.

The same design as kernels/lstm/triton.py (whose helpers and dispatch it shares): up to
WHOLE_SEQUENCE_MAX_HIDDEN one launch per sequence, a program per BLOCK_B batch rows holding h in
registers across the T steps, three [BLOCK_B, H] x [H, H] tensor-core dots per step fused with
the gates, the reset and the stores; beyond it one launch per step split over blocks of hidden
units, the backward carrying dL/dh_t z_t elementwise in a [B, H] buffer and taking the matrix
part of dL/dh_t from the gate gradients the previous launch stored. The backward pass recomputes
the gates from the stored h, walks time in reverse, writes dL/dx_proj and dL/d(W_hn h + b_hn),
and the weight gradient is one GEMM afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import device_guard
from kernels.lstm.triton import (
    ACCUMULATOR,
    BLOCK_B,
    DOT_PRECISION,
    STEP_KERNEL_CONFIG,
    SUPPORTED_DTYPES,
    check_triton_inputs,
    gate_bias,
    previous_hidden,
    previous_state_rows,
    sigmoid,
    square_tile,
    step_grid,
    streamed_product,
    tanh,
    weight_gradient,
    weight_resident,
    whole_sequence,
    whole_sequence_launch,
)


@triton.jit
def _transposed_weights(weight_t_ptr, H, units):
    """W_k^T [H_in, H_out] for the gates r, z, n, read from W^T [H, 3H]."""
    return (
        square_tile(weight_t_ptr, 3 * H, H, units),
        square_tile(weight_t_ptr + H, 3 * H, H, units),
        square_tile(weight_t_ptr + 2 * H, 3 * H, H, units),
    )


@triton.jit
def _weights(weight_ptr, H, units):
    """W_k [H_out, H_in] for the gates r, z, n, read from W [3H, H]."""
    return (
        square_tile(weight_ptr, H, H, units),
        square_tile(weight_ptr + H * H, H, H, units),
        square_tile(weight_ptr + 2 * H * H, H, H, units),
    )


@triton.jit
def _resident_recurrence(h_prev, weight_t_r, weight_t_z, weight_t_n, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr):
    """h_{t-1} W_hh^T per gate with the weights held by the program."""
    operand = h_prev.to(weight_t_r.dtype)
    return (
        tl.dot(operand, weight_t_r, input_precision=DOT_PRECISION, out_dtype=ACC),
        tl.dot(operand, weight_t_z, input_precision=DOT_PRECISION, out_dtype=ACC),
        tl.dot(operand, weight_t_n, input_precision=DOT_PRECISION, out_dtype=ACC),
    )


@triton.jit
def _streamed_recurrence(previous_rows, row_mask, keep, weight_t_ptr, H, units,
                         DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """h_{t-1} W_hh^T per gate (zero rows where reset), streaming h_{t-1} and W^T from memory."""
    product_r = streamed_product(previous_rows, row_mask, weight_t_ptr, 3 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    product_z = streamed_product(previous_rows, row_mask, weight_t_ptr + H, 3 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    product_n = streamed_product(previous_rows, row_mask, weight_t_ptr + 2 * H, 3 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    return tl.where(keep, product_r, 0.0), tl.where(keep, product_z, 0.0), tl.where(keep, product_n, 0.0)


@triton.jit
def _gates(x_ptr, x_offsets, mask, H, recurrent_r, recurrent_z, recurrent_n, bias_r, bias_z, bias_n, ACC: tl.constexpr):
    """(r, z, n, W_hn h + b_hn) of one step from its recurrent terms, in ACC."""
    hidden_n = recurrent_n + bias_n[None, :]
    reset_gate = sigmoid(tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(ACC) + recurrent_r + bias_r[None, :])
    update_gate = sigmoid(tl.load(x_ptr + x_offsets + H, mask=mask, other=0.0).to(ACC) + recurrent_z + bias_z[None, :])
    candidate = tanh(tl.load(x_ptr + x_offsets + 2 * H, mask=mask, other=0.0).to(ACC) + reset_gate * hidden_n)
    return reset_gate, update_gate, candidate, hidden_n


@triton.jit
def gru_fwd_kernel(
    x_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, h_seq_ptr, h_final_ptr,
    B, T, H,
    HAS_BIAS: tl.constexpr, WEIGHT_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.arange(0, BLOCK_H)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    state_offsets = rows[:, None] * H + units[None, :]
    h = tl.load(h0_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    bias_r = gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC)
    bias_z = gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC)
    bias_n = gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC)
    if WEIGHT_RESIDENT:
        weight_t_r, weight_t_z, weight_t_n = _transposed_weights(weight_t_ptr, H, units)
    for t in range(T):
        keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
        h = tl.where(keep, h, 0.0)
        if WEIGHT_RESIDENT:
            recurrent_r, recurrent_z, recurrent_n = _resident_recurrence(h, weight_t_r, weight_t_z, weight_t_n, DOT_PRECISION, ACC)
        else:
            previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
            recurrent_r, recurrent_z, recurrent_n = _streamed_recurrence(
                previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
            )
        x_offsets = (rows[:, None] * T + t) * (3 * H) + units[None, :]
        _, update_gate, candidate, _ = _gates(x_ptr, x_offsets, mask, H, recurrent_r, recurrent_z, recurrent_n, bias_r, bias_z, bias_n, ACC)
        h = (1.0 - update_gate) * candidate + update_gate * h
        tl.store(h_seq_ptr + (rows[:, None] * T + t) * H + units[None, :], h.to(h_seq_ptr.dtype.element_ty), mask=mask)
        if not WEIGHT_RESIDENT:
            # The next step streams h_t back from memory: every thread's part must be written.
            tl.debug_barrier()
    tl.store(h_final_ptr + state_offsets, h.to(h_final_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gru_bwd_kernel(
    x_ptr, weight_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, h_seq_ptr,
    grad_h_seq_ptr, grad_h_final_ptr,
    grad_x_ptr, grad_hidden_n_ptr, grad_h0_ptr,
    B, T, H,
    HAS_BIAS: tl.constexpr, WEIGHT_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.arange(0, BLOCK_H)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    state_offsets = rows[:, None] * H + units[None, :]
    grad_h = tl.load(grad_h_final_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    bias_r = gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC)
    bias_z = gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC)
    bias_n = gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC)
    if WEIGHT_RESIDENT:
        weight_t_r, weight_t_z, weight_t_n = _transposed_weights(weight_t_ptr, H, units)
        weight_r, weight_z, weight_n = _weights(weight_ptr, H, units)
    for step in range(T):
        t = T - 1 - step
        keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
        sequence_offsets = (rows[:, None] * T + t) * H + units[None, :]
        previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
        h_prev = tl.where(keep, tl.load(previous_rows + units[None, :], mask=mask, other=0.0).to(ACC), 0.0)
        # Recompute the gates of step t from the state it read.
        if WEIGHT_RESIDENT:
            recurrent_r, recurrent_z, recurrent_n = _resident_recurrence(h_prev, weight_t_r, weight_t_z, weight_t_n, DOT_PRECISION, ACC)
        else:
            recurrent_r, recurrent_z, recurrent_n = _streamed_recurrence(
                previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
            )
        x_offsets = (rows[:, None] * T + t) * (3 * H) + units[None, :]
        reset_gate, update_gate, candidate, hidden_n = _gates(
            x_ptr, x_offsets, mask, H, recurrent_r, recurrent_z, recurrent_n, bias_r, bias_z, bias_n, ACC
        )
        grad_h += tl.load(grad_h_seq_ptr + sequence_offsets, mask=mask, other=0.0).to(ACC)
        grad_candidate = grad_h * (1.0 - update_gate) * (1.0 - candidate * candidate)
        grad_update = grad_h * (h_prev - candidate) * update_gate * (1.0 - update_gate)
        grad_reset = grad_candidate * hidden_n * reset_gate * (1.0 - reset_gate)
        grad_hidden_n = grad_candidate * reset_gate
        grad_x_dtype = grad_x_ptr.dtype.element_ty
        tl.store(grad_x_ptr + x_offsets, grad_reset.to(grad_x_dtype), mask=mask)
        tl.store(grad_x_ptr + x_offsets + H, grad_update.to(grad_x_dtype), mask=mask)
        tl.store(grad_x_ptr + x_offsets + 2 * H, grad_candidate.to(grad_x_dtype), mask=mask)
        tl.store(grad_hidden_n_ptr + sequence_offsets, grad_hidden_n.to(grad_hidden_n_ptr.dtype.element_ty), mask=mask)
        grad_h_prev = grad_h * update_gate
        if WEIGHT_RESIDENT:
            weight_dtype = weight_r.dtype
            grad_h_prev += tl.dot(grad_reset.to(weight_dtype), weight_r, input_precision=DOT_PRECISION, out_dtype=ACC)
            grad_h_prev += tl.dot(grad_update.to(weight_dtype), weight_z, input_precision=DOT_PRECISION, out_dtype=ACC)
            grad_h_prev += tl.dot(grad_hidden_n.to(weight_dtype), weight_n, input_precision=DOT_PRECISION, out_dtype=ACC)
        else:
            # Stream the gradients just stored back against W: every thread's part must be written.
            tl.debug_barrier()
            grad_rows = grad_x_ptr + ((rows * T + t) * (3 * H))[:, None]
            hidden_n_rows = grad_hidden_n_ptr + ((rows * T + t) * H)[:, None]
            row_mask_2d = row_mask[:, None]
            grad_h_prev += streamed_product(grad_rows, row_mask_2d, weight_ptr, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
            grad_h_prev += streamed_product(grad_rows + H, row_mask_2d, weight_ptr + H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
            grad_h_prev += streamed_product(hidden_n_rows, row_mask_2d, weight_ptr + 2 * H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        # No gradient crosses a reset.
        grad_h = tl.where(keep, grad_h_prev, 0.0)
    tl.store(grad_h0_ptr + state_offsets, grad_h.to(grad_h0_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["t"])
def gru_fwd_step_kernel(
    x_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, h_seq_ptr,
    B, T, H, t,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Step t for BLOCK_B batch rows and BLOCK_U hidden units: reads h_{t-1} (all H units, written
    by the previous launch), writes h_t of its units."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
    previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
    h_prev = tl.where(keep, tl.load(previous_rows + units[None, :], mask=mask, other=0.0).to(ACC), 0.0)
    recurrent_r, recurrent_z, recurrent_n = _streamed_recurrence(
        previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
    )
    x_offsets = (rows[:, None] * T + t) * (3 * H) + units[None, :]
    _, update_gate, candidate, _ = _gates(
        x_ptr, x_offsets, mask, H, recurrent_r, recurrent_z, recurrent_n, gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC),
        gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC), gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC), ACC,
    )
    h = (1.0 - update_gate) * candidate + update_gate * h_prev
    tl.store(h_seq_ptr + (rows[:, None] * T + t) * H + units[None, :], h.to(h_seq_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["t"])
def gru_bwd_step_kernel(
    x_ptr, weight_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, h_seq_ptr,
    grad_h_seq_ptr, grad_h_carry_ptr, grad_x_ptr, grad_hidden_n_ptr,
    B, T, H, t,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward step t (launched for t = T-1 down to 0) for BLOCK_B rows and BLOCK_U units.

    dL/dh_t = upstream + grad_h_carry (dL/dh_T before the first launch, then dL/dh_{t+1} z_{t+1},
    zero across a reset) + the gate gradients of step t+1 (stored by the previous launch in
    grad_x and grad_hidden_n) times W_hh. Writes the gradients of step t and the carry
    dL/dh_t z_t (zero where step t starts an episode) back to grad_h_carry."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    state_offsets = rows[:, None] * H + units[None, :]
    sequence_offsets = (rows[:, None] * T + t) * H + units[None, :]
    grad_h = tl.load(grad_h_seq_ptr + sequence_offsets, mask=mask, other=0.0).to(ACC)
    grad_h += tl.load(grad_h_carry_ptr + state_offsets, mask=mask, other=0.0)
    if t < T - 1:
        keep_next = (tl.load(reset_ptr + rows * T + t + 1, mask=row_mask, other=1) == 0)[:, None]
        next_rows = grad_x_ptr + ((rows * T + t + 1) * (3 * H))[:, None]
        hidden_n_rows = grad_hidden_n_ptr + ((rows * T + t + 1) * H)[:, None]
        row_mask_2d = row_mask[:, None]
        grad_next = streamed_product(next_rows, row_mask_2d, weight_ptr, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_next += streamed_product(next_rows + H, row_mask_2d, weight_ptr + H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_next += streamed_product(hidden_n_rows, row_mask_2d, weight_ptr + 2 * H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_h += tl.where(keep_next, grad_next, 0.0)
    # Recompute the gates of step t from the state it read.
    keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
    previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
    h_prev = tl.where(keep, tl.load(previous_rows + units[None, :], mask=mask, other=0.0).to(ACC), 0.0)
    recurrent_r, recurrent_z, recurrent_n = _streamed_recurrence(
        previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
    )
    x_offsets = (rows[:, None] * T + t) * (3 * H) + units[None, :]
    reset_gate, update_gate, candidate, hidden_n = _gates(
        x_ptr, x_offsets, mask, H, recurrent_r, recurrent_z, recurrent_n, gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC),
        gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC), gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC), ACC,
    )
    grad_candidate = grad_h * (1.0 - update_gate) * (1.0 - candidate * candidate)
    grad_x_dtype = grad_x_ptr.dtype.element_ty
    tl.store(grad_x_ptr + x_offsets, (grad_candidate * hidden_n * reset_gate * (1.0 - reset_gate)).to(grad_x_dtype), mask=mask)
    tl.store(grad_x_ptr + x_offsets + H, (grad_h * (h_prev - candidate) * update_gate * (1.0 - update_gate)).to(grad_x_dtype), mask=mask)
    tl.store(grad_x_ptr + x_offsets + 2 * H, grad_candidate.to(grad_x_dtype), mask=mask)
    tl.store(grad_hidden_n_ptr + sequence_offsets, (grad_candidate * reset_gate).to(grad_hidden_n_ptr.dtype.element_ty), mask=mask)
    # No gradient crosses a reset.
    tl.store(grad_h_carry_ptr + state_offsets, tl.where(keep, grad_h * update_gate, 0.0), mask=mask)


class _GRUTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, weight_hh, bias, reset, h0):
        batch_size, length, _ = x_proj.shape
        hidden_size = weight_hh.shape[1]
        h_seq = torch.empty(batch_size, length, hidden_size, dtype=x_proj.dtype, device=x_proj.device)
        h_final = torch.empty_like(h0)
        reset_bytes = reset.view(torch.uint8)
        weight_t = weight_hh.T.contiguous()
        bias_or_dummy = x_proj if bias is None else bias
        with device_guard(x_proj):
            if whole_sequence(hidden_size, "forward"):
                gru_fwd_kernel[(triton.cdiv(batch_size, BLOCK_B),)](
                    x_proj, weight_t, bias_or_dummy, reset_bytes, h0, h_seq, h_final,
                    batch_size, length, hidden_size,
                    HAS_BIAS=bias is not None, WEIGHT_RESIDENT=weight_resident(hidden_size, weight_hh.dtype, 3),
                    DOT_PRECISION=DOT_PRECISION, ACC=ACCUMULATOR, BLOCK_B=BLOCK_B,
                    **whole_sequence_launch("gru_fwd_kernel", hidden_size), num_stages=1,
                )
            else:
                for t in range(length):
                    gru_fwd_step_kernel[step_grid(batch_size, hidden_size)](
                        x_proj, weight_t, bias_or_dummy, reset_bytes, h0, h_seq,
                        batch_size, length, hidden_size, t,
                        HAS_BIAS=bias is not None, **STEP_KERNEL_CONFIG,
                    )
                h_final.copy_(h_seq[:, -1])
        ctx.save_for_backward(x_proj, weight_hh, bias, reset, h0, h_seq)
        return h_seq, h_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h_seq, grad_h_final):
        x_proj, weight_hh, bias, reset, h0, h_seq = ctx.saved_tensors
        batch_size, length, _ = x_proj.shape
        hidden_size = weight_hh.shape[1]
        grad_x = torch.empty_like(x_proj)
        # dL/d(W_hn h + b_hn) differs from dL/dx_n by the factor r: the n rows of the weight
        # gradient need it.
        grad_hidden_n = torch.empty_like(h_seq)
        grad_h0 = torch.empty_like(h0)
        reset_bytes = reset.view(torch.uint8)
        weight_t = weight_hh.T.contiguous()
        bias_or_dummy = x_proj if bias is None else bias
        grad_h_seq = grad_h_seq.contiguous()
        with device_guard(x_proj):
            if whole_sequence(hidden_size, "backward"):
                gru_bwd_kernel[(triton.cdiv(batch_size, BLOCK_B),)](
                    x_proj, weight_hh, weight_t, bias_or_dummy, reset_bytes,
                    h0, h_seq, grad_h_seq, grad_h_final.contiguous(),
                    grad_x, grad_hidden_n, grad_h0,
                    batch_size, length, hidden_size,
                    HAS_BIAS=bias is not None, WEIGHT_RESIDENT=weight_resident(hidden_size, weight_hh.dtype, 6),
                    DOT_PRECISION=DOT_PRECISION, ACC=ACCUMULATOR, BLOCK_B=BLOCK_B,
                    **whole_sequence_launch("gru_bwd_kernel", hidden_size), num_stages=1,
                )
            else:
                grad_h_carry = grad_h_final.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                for t in reversed(range(length)):
                    gru_bwd_step_kernel[step_grid(batch_size, hidden_size)](
                        x_proj, weight_hh, weight_t, bias_or_dummy, reset_bytes, h0, h_seq,
                        grad_h_seq, grad_h_carry, grad_x, grad_hidden_n,
                        batch_size, length, hidden_size, t,
                        HAS_BIAS=bias is not None, **STEP_KERNEL_CONFIG,
                    )
                first_step_gradients = torch.cat([grad_x[:, 0, : 2 * hidden_size], grad_hidden_n[:, 0]], dim=-1)
                grad_h0.copy_(grad_h_carry + ~reset[:, 0, None] * (first_step_gradients @ weight_hh))
        grad_reset_update = grad_x[..., : 2 * hidden_size]
        grad_weight = None
        if ctx.needs_input_grad[1]:
            h_previous = previous_hidden(h0, h_seq, reset)
            grad_weight = torch.cat(
                [weight_gradient(grad_reset_update, h_previous), weight_gradient(grad_hidden_n, h_previous)]
            )
        grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = torch.cat([grad_reset_update.sum(dim=(0, 1)), grad_hidden_n.sum(dim=(0, 1))])
        return grad_x, grad_weight, grad_bias, None, grad_h0


def gru_sequence_triton(
    x_proj: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `gru_sequence_naive`; dtypes float16/bfloat16/float32, any H."""
    check_triton_inputs("gru", x_proj, weight_hh, bias, reset, initial_state)
    return _GRUTriton.apply(
        x_proj.contiguous(), weight_hh.contiguous(), None if bias is None else bias.contiguous(),
        reset.contiguous(), initial_state.contiguous(),
    )


__all__ = ["SUPPORTED_DTYPES", "gru_sequence_triton"]

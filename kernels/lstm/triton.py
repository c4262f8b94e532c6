"""Fused Triton LSTM over a sequence, with resets: one launch per sequence for small H, one
launch per step beyond.

Whole sequence (H <= WHOLE_SEQUENCE_MAX_HIDDEN): a program owns BLOCK_B batch rows and all H
hidden units, and walks the T steps inside the kernel with (h, c) in registers; per step the
recurrent product is four [BLOCK_B, H] x [H, H] tensor-core dots (one per gate), fused with the
gate nonlinearities, the reset (the carried state is zeroed where reset[b, t]) and the stores.
The recurrent weight is read once per program and held on chip for the whole sequence when it
fits RESIDENT_WEIGHT_BYTES; otherwise each step streams W (from L2) and h_{t-1} (just stored,
behind a CTA barrier) in BLOCK_K-wide slices, which keeps registers and shared memory bounded.

Split per step (larger H, any size): step t is one launch whose programs each own BLOCK_B rows
and BLOCK_U units of every gate; a program streams the full h_{t-1} (written by the previous
launch: launches on one stream run in order, so no program waits on another inside a launch)
against its columns of W^T and writes h_t, c_t of its units. The backward launch for step t
first adds the path through step t+1 (its gate gradients, stored by the previous launch, times
W) to dL/dh_t, recomputes the gates, and carries dL/dc elementwise in a [B, H] buffer.

Backward in both forms recomputes the gates from the stored h/c (no gate buffer) and writes
dL/dx_proj; the weight gradient is then one [4H, B*T] x [B*T, H] GEMM outside the kernel
(cuBLAS at full rate instead of a per-step register accumulation), and the bias gradient a sum
of dL/dx_proj.

float32 dots use "tf32x3" (three TF32 tensor-core passes: float32 accuracy); bfloat16 and
float16 keep their own dots with float32 accumulation; the state, gates and carried
gradients are float32 throughout. float64 is left to the naive reference. Registers, spills
and shared memory of every configuration: benchmarks/kernels_compile.md.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels import device_guard

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_B = 16
# Largest H a direction runs as one whole-sequence launch; beyond it, one split launch per step.
# The whole-sequence backward at H = 128 spilled registers in every variant tried (float32, triton
# 3.9: 40 to 120 bytes per thread on sm_90a with 16- or 32-wide slices and 8 or 16 warps, 88 on
# sm_80); its forward does not spill.
WHOLE_SEQUENCE_MAX_HIDDEN = {"forward": 128, "backward": 64}
# (BLOCK_K, num_warps) of each whole-sequence kernel per padded H (BLOCK_H): the choice with which
# every float32 configuration compiles without register spills for sm_80 and sm_90a (checked by
# tests/kernels/test_compile.py). Neither knob is monotone: ptxas caps some 8-warp builds at 128
# registers and spills there, and 32-wide slices spill where 16-wide ones do not, or the reverse.
WHOLE_SEQUENCE_LAUNCH = {
    "lstm_fwd_kernel": {16: (16, 4), 32: (32, 4), 64: (16, 8), 128: (16, 8)},
    "lstm_bwd_kernel": {16: (16, 4), 32: (32, 8), 64: (16, 8)},
    "gru_fwd_kernel": {16: (16, 4), 32: (32, 4), 64: (16, 8), 128: (16, 8)},
    "gru_bwd_kernel": {16: (16, 4), 32: (32, 4), 64: (32, 8)},
}
DOT_PRECISION = "tf32x3"
ACCUMULATOR = tl.float32
# Per-step launches: BLOCK_U hidden units (of all gates) of BLOCK_B rows per program, the
# recurrent product streamed in BLOCK_K-wide slices.
STEP_KERNEL_CONFIG = dict(DOT_PRECISION=DOT_PRECISION, ACC=ACCUMULATOR, BLOCK_B=BLOCK_B, BLOCK_U=32, BLOCK_K=16,
                          num_warps=4, num_stages=1)
# Resident weights end up in shared memory as tensor-core operands (twice over for float32,
# whose tf32x3 dots keep a high and a low part); past this budget they are streamed instead.
# With 48 KB every float32 whole-sequence configuration compiles without register spills for
# sm_80 and sm_90a; resident weights beyond it spilled (LSTM forward at H = 64, 24 B per thread
# on sm_90a; LSTM backward at H = 32, 32 B on both).
RESIDENT_WEIGHT_BYTES = 48 * 1024


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def square_tile(pointer, row_stride, H, units):
    """The [H, H] block at `pointer` with rows `row_stride` apart, zero-padded to [BLOCK_H, BLOCK_H]."""
    mask = (units[:, None] < H) & (units[None, :] < H)
    return tl.load(pointer + units[:, None] * row_stride + units[None, :], mask=mask, other=0.0)


@triton.jit
def streamed_product(row_pointers, row_mask, weight_ptr, weight_row_stride, H, units,
                     DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """A @ W with A [BLOCK_B, H] read from memory (row b starts at row_pointers[b]) and W [H, H]
    (row k at weight_ptr + k * weight_row_stride), BLOCK_K columns of A / rows of W at a time,
    so large weights never sit whole in registers."""
    product = tl.zeros((BLOCK_B, units.shape[0]), ACC)
    for k_start in range(0, H, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        a = tl.load(row_pointers + ks[None, :], mask=row_mask & (ks[None, :] < H), other=0.0)
        w_mask = (ks[:, None] < H) & (units[None, :] < H)
        w = tl.load(weight_ptr + ks[:, None] * weight_row_stride + units[None, :], mask=w_mask, other=0.0)
        product += tl.dot(a, w, input_precision=DOT_PRECISION, out_dtype=ACC)
    return product


@triton.jit
def gate_bias(bias_ptr, gate, H, units, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    if HAS_BIAS:
        bias = tl.load(bias_ptr + gate * H + units, mask=units < H, other=0.0).to(ACC)
    else:
        bias = tl.zeros(units.shape, ACC)
    return bias


@triton.jit
def previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H):
    """Pointers to the rows of the state step t read: h_seq[:, t - 1], or h0 at t = 0 -> [BLOCK_B, 1]."""
    pointers = h_seq_ptr + ((rows * T + t - 1) * H)[:, None]
    if t == 0:
        pointers = h0_ptr + (rows * H)[:, None]
    return pointers


@triton.jit
def _transposed_weights(weight_t_ptr, H, units):
    """W_k^T [H_in, H_out] for the gates i, f, g, o, read from W^T [H, 4H]."""
    return (
        square_tile(weight_t_ptr, 4 * H, H, units),
        square_tile(weight_t_ptr + H, 4 * H, H, units),
        square_tile(weight_t_ptr + 2 * H, 4 * H, H, units),
        square_tile(weight_t_ptr + 3 * H, 4 * H, H, units),
    )


@triton.jit
def _weights(weight_ptr, H, units):
    """W_k [H_out, H_in] for the gates i, f, g, o, read from W [4H, H]."""
    return (
        square_tile(weight_ptr, H, H, units),
        square_tile(weight_ptr + H * H, H, H, units),
        square_tile(weight_ptr + 2 * H * H, H, H, units),
        square_tile(weight_ptr + 3 * H * H, H, H, units),
    )


@triton.jit
def _sequence_recurrence(previous_rows, row_mask, keep, weight_t_ptr, H, units,
                         DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """h_{t-1} W_hh^T per gate (zero rows where reset), streaming h_{t-1} and W^T from memory."""
    product_i = streamed_product(previous_rows, row_mask, weight_t_ptr, 4 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    product_f = streamed_product(previous_rows, row_mask, weight_t_ptr + H, 4 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    product_g = streamed_product(previous_rows, row_mask, weight_t_ptr + 2 * H, 4 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    product_o = streamed_product(previous_rows, row_mask, weight_t_ptr + 3 * H, 4 * H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
    return (
        tl.where(keep, product_i, 0.0), tl.where(keep, product_f, 0.0),
        tl.where(keep, product_g, 0.0), tl.where(keep, product_o, 0.0),
    )


@triton.jit
def _gates(x_ptr, x_offsets, mask, H, recurrent_i, recurrent_f, recurrent_g, recurrent_o,
           bias_i, bias_f, bias_g, bias_o, ACC: tl.constexpr):
    """The activated gates i, f, g, o of one step from their recurrent terms."""
    input_gate = sigmoid(tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(ACC) + recurrent_i + bias_i[None, :])
    forget_gate = sigmoid(tl.load(x_ptr + x_offsets + H, mask=mask, other=0.0).to(ACC) + recurrent_f + bias_f[None, :])
    candidate = tanh(tl.load(x_ptr + x_offsets + 2 * H, mask=mask, other=0.0).to(ACC) + recurrent_g + bias_g[None, :])
    output_gate = sigmoid(tl.load(x_ptr + x_offsets + 3 * H, mask=mask, other=0.0).to(ACC) + recurrent_o + bias_o[None, :])
    return input_gate, forget_gate, candidate, output_gate


@triton.jit
def lstm_fwd_kernel(
    x_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, c0_ptr,
    h_seq_ptr, c_seq_ptr, h_final_ptr, c_final_ptr,
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
    c = tl.load(c0_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    bias_i = gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC)
    bias_f = gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC)
    bias_g = gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC)
    bias_o = gate_bias(bias_ptr, 3, H, units, HAS_BIAS, ACC)
    if WEIGHT_RESIDENT:
        weight_i, weight_f, weight_g, weight_o = _transposed_weights(weight_t_ptr, H, units)
    for t in range(T):
        keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
        c = tl.where(keep, c, 0.0)
        if WEIGHT_RESIDENT:
            operand = tl.where(keep, h, 0.0).to(weight_t_ptr.dtype.element_ty)
            recurrent_i = tl.dot(operand, weight_i, input_precision=DOT_PRECISION, out_dtype=ACC)
            recurrent_f = tl.dot(operand, weight_f, input_precision=DOT_PRECISION, out_dtype=ACC)
            recurrent_g = tl.dot(operand, weight_g, input_precision=DOT_PRECISION, out_dtype=ACC)
            recurrent_o = tl.dot(operand, weight_o, input_precision=DOT_PRECISION, out_dtype=ACC)
        else:
            previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
            recurrent_i, recurrent_f, recurrent_g, recurrent_o = _sequence_recurrence(
                previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
            )
        x_offsets = (rows[:, None] * T + t) * (4 * H) + units[None, :]
        input_gate, forget_gate, candidate, output_gate = _gates(
            x_ptr, x_offsets, mask, H, recurrent_i, recurrent_f, recurrent_g, recurrent_o, bias_i, bias_f, bias_g, bias_o, ACC
        )
        c = forget_gate * c + input_gate * candidate
        h = output_gate * tanh(c)
        sequence_offsets = (rows[:, None] * T + t) * H + units[None, :]
        tl.store(h_seq_ptr + sequence_offsets, h.to(h_seq_ptr.dtype.element_ty), mask=mask)
        tl.store(c_seq_ptr + sequence_offsets, c.to(c_seq_ptr.dtype.element_ty), mask=mask)
        if not WEIGHT_RESIDENT:
            # The next step streams h_t back from memory: every thread's part must be written.
            tl.debug_barrier()
    tl.store(h_final_ptr + state_offsets, h.to(h_final_ptr.dtype.element_ty), mask=mask)
    tl.store(c_final_ptr + state_offsets, c.to(c_final_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lstm_bwd_kernel(
    x_ptr, weight_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, c0_ptr, h_seq_ptr, c_seq_ptr,
    grad_h_seq_ptr, grad_h_final_ptr, grad_c_final_ptr,
    grad_x_ptr, grad_h0_ptr, grad_c0_ptr,
    B, T, H,
    HAS_BIAS: tl.constexpr, WEIGHT_RESIDENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.arange(0, BLOCK_H)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    state_offsets = rows[:, None] * H + units[None, :]
    c0 = tl.load(c0_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    grad_h = tl.load(grad_h_final_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    grad_c = tl.load(grad_c_final_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    bias_i = gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC)
    bias_f = gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC)
    bias_g = gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC)
    bias_o = gate_bias(bias_ptr, 3, H, units, HAS_BIAS, ACC)
    if WEIGHT_RESIDENT:
        weight_t_i, weight_t_f, weight_t_g, weight_t_o = _transposed_weights(weight_t_ptr, H, units)
        weight_i, weight_f, weight_g, weight_o = _weights(weight_ptr, H, units)
    for step in range(T):
        t = T - 1 - step
        keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
        sequence_offsets = (rows[:, None] * T + t) * H + units[None, :]
        has_previous = mask & (tl.full(mask.shape, t, tl.int32) > 0)
        c_prev = tl.load(c_seq_ptr + sequence_offsets - H, mask=has_previous, other=0.0).to(ACC)
        c_prev = tl.where(keep, tl.where(t > 0, c_prev, c0), 0.0)
        c = tl.load(c_seq_ptr + sequence_offsets, mask=mask, other=0.0).to(ACC)
        # Recompute the gates of step t from the state it read.
        previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
        if WEIGHT_RESIDENT:
            h_prev = tl.load(previous_rows + units[None, :], mask=mask, other=0.0)
            operand = tl.where(keep, h_prev, 0.0)
            recurrent_i = tl.dot(operand, weight_t_i, input_precision=DOT_PRECISION, out_dtype=ACC)
            recurrent_f = tl.dot(operand, weight_t_f, input_precision=DOT_PRECISION, out_dtype=ACC)
            recurrent_g = tl.dot(operand, weight_t_g, input_precision=DOT_PRECISION, out_dtype=ACC)
            recurrent_o = tl.dot(operand, weight_t_o, input_precision=DOT_PRECISION, out_dtype=ACC)
        else:
            recurrent_i, recurrent_f, recurrent_g, recurrent_o = _sequence_recurrence(
                previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
            )
        x_offsets = (rows[:, None] * T + t) * (4 * H) + units[None, :]
        input_gate, forget_gate, candidate, output_gate = _gates(
            x_ptr, x_offsets, mask, H, recurrent_i, recurrent_f, recurrent_g, recurrent_o, bias_i, bias_f, bias_g, bias_o, ACC
        )
        grad_h += tl.load(grad_h_seq_ptr + sequence_offsets, mask=mask, other=0.0).to(ACC)
        tanh_c = tanh(c)
        grad_c += grad_h * output_gate * (1.0 - tanh_c * tanh_c)
        grad_input = grad_c * candidate * input_gate * (1.0 - input_gate)
        grad_forget = grad_c * c_prev * forget_gate * (1.0 - forget_gate)
        grad_candidate = grad_c * input_gate * (1.0 - candidate * candidate)
        grad_output = grad_h * tanh_c * output_gate * (1.0 - output_gate)
        grad_x_dtype = grad_x_ptr.dtype.element_ty
        tl.store(grad_x_ptr + x_offsets, grad_input.to(grad_x_dtype), mask=mask)
        tl.store(grad_x_ptr + x_offsets + H, grad_forget.to(grad_x_dtype), mask=mask)
        tl.store(grad_x_ptr + x_offsets + 2 * H, grad_candidate.to(grad_x_dtype), mask=mask)
        tl.store(grad_x_ptr + x_offsets + 3 * H, grad_output.to(grad_x_dtype), mask=mask)
        if WEIGHT_RESIDENT:
            weight_dtype = weight_ptr.dtype.element_ty
            grad_h_prev = tl.dot(grad_input.to(weight_dtype), weight_i, input_precision=DOT_PRECISION, out_dtype=ACC)
            grad_h_prev += tl.dot(grad_forget.to(weight_dtype), weight_f, input_precision=DOT_PRECISION, out_dtype=ACC)
            grad_h_prev += tl.dot(grad_candidate.to(weight_dtype), weight_g, input_precision=DOT_PRECISION, out_dtype=ACC)
            grad_h_prev += tl.dot(grad_output.to(weight_dtype), weight_o, input_precision=DOT_PRECISION, out_dtype=ACC)
        else:
            # Stream the gate gradients just stored back against W: every thread's part must be written.
            tl.debug_barrier()
            grad_rows = grad_x_ptr + ((rows * T + t) * (4 * H))[:, None]
            row_mask_2d = row_mask[:, None]
            grad_h_prev = streamed_product(grad_rows, row_mask_2d, weight_ptr, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
            grad_h_prev += streamed_product(grad_rows + H, row_mask_2d, weight_ptr + H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
            grad_h_prev += streamed_product(grad_rows + 2 * H, row_mask_2d, weight_ptr + 2 * H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
            grad_h_prev += streamed_product(grad_rows + 3 * H, row_mask_2d, weight_ptr + 3 * H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        # No gradient crosses a reset.
        grad_h = tl.where(keep, grad_h_prev, 0.0)
        grad_c = tl.where(keep, grad_c * forget_gate, 0.0)
    tl.store(grad_h0_ptr + state_offsets, grad_h.to(grad_h0_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_c0_ptr + state_offsets, grad_c.to(grad_c0_ptr.dtype.element_ty), mask=mask)


@triton.jit
def previous_cell(c0_ptr, c_seq_ptr, rows, units, mask, t, T, H, ACC: tl.constexpr):
    """c_{t-1} (c0 at t = 0; the two may differ in dtype) of the given rows and units -> [BLOCK_B, BLOCK_U]."""
    if t == 0:
        c_prev = tl.load(c0_ptr + rows[:, None] * H + units[None, :], mask=mask, other=0.0).to(ACC)
    else:
        c_prev = tl.load(c_seq_ptr + (rows[:, None] * T + t - 1) * H + units[None, :], mask=mask, other=0.0).to(ACC)
    return c_prev


@triton.jit(do_not_specialize=["t"])
def lstm_fwd_step_kernel(
    x_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, c0_ptr, h_seq_ptr, c_seq_ptr,
    B, T, H, t,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Step t for BLOCK_B batch rows and BLOCK_U hidden units: reads h_{t-1} (all H units, written
    by the previous launch) and c_{t-1}, writes h_t and c_t of its units."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
    previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
    recurrent_i, recurrent_f, recurrent_g, recurrent_o = _sequence_recurrence(
        previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
    )
    c_prev = tl.where(keep, previous_cell(c0_ptr, c_seq_ptr, rows, units, mask, t, T, H, ACC), 0.0)
    x_offsets = (rows[:, None] * T + t) * (4 * H) + units[None, :]
    input_gate, forget_gate, candidate, output_gate = _gates(
        x_ptr, x_offsets, mask, H, recurrent_i, recurrent_f, recurrent_g, recurrent_o,
        gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC), gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC),
        gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC), gate_bias(bias_ptr, 3, H, units, HAS_BIAS, ACC), ACC,
    )
    c = forget_gate * c_prev + input_gate * candidate
    h = output_gate * tanh(c)
    sequence_offsets = (rows[:, None] * T + t) * H + units[None, :]
    tl.store(h_seq_ptr + sequence_offsets, h.to(h_seq_ptr.dtype.element_ty), mask=mask)
    tl.store(c_seq_ptr + sequence_offsets, c.to(c_seq_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["t"])
def lstm_bwd_step_kernel(
    x_ptr, weight_ptr, weight_t_ptr, bias_ptr, reset_ptr, h0_ptr, c0_ptr, h_seq_ptr, c_seq_ptr,
    grad_h_seq_ptr, grad_h_final_ptr, grad_c_carry_ptr, grad_x_ptr,
    B, T, H, t,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward step t (launched for t = T-1 down to 0) for BLOCK_B rows and BLOCK_U units.

    dL/dh_t = upstream + (dL/dh_T at t = T-1, else the gate gradients of step t+1, which the
    previous launch stored in grad_x, times W_hh); dL/dc_t = grad_c_carry (dL/dc_{t+1} f_{t+1},
    zero across a reset) + the path through h_t. Writes the gate gradients of step t to grad_x
    and the carry dL/dc_t f_t (zero where step t starts an episode) back to grad_c_carry."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    units = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    row_mask = rows < B
    mask = row_mask[:, None] & (units[None, :] < H)
    state_offsets = rows[:, None] * H + units[None, :]
    sequence_offsets = (rows[:, None] * T + t) * H + units[None, :]
    grad_h = tl.load(grad_h_seq_ptr + sequence_offsets, mask=mask, other=0.0).to(ACC)
    if t == T - 1:
        grad_h += tl.load(grad_h_final_ptr + state_offsets, mask=mask, other=0.0).to(ACC)
    else:
        keep_next = (tl.load(reset_ptr + rows * T + t + 1, mask=row_mask, other=1) == 0)[:, None]
        next_rows = grad_x_ptr + ((rows * T + t + 1) * (4 * H))[:, None]
        row_mask_2d = row_mask[:, None]
        grad_next = streamed_product(next_rows, row_mask_2d, weight_ptr, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_next += streamed_product(next_rows + H, row_mask_2d, weight_ptr + H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_next += streamed_product(next_rows + 2 * H, row_mask_2d, weight_ptr + 2 * H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_next += streamed_product(next_rows + 3 * H, row_mask_2d, weight_ptr + 3 * H * H, H, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K)
        grad_h += tl.where(keep_next, grad_next, 0.0)
    # Recompute the gates of step t from the state it read.
    keep = (tl.load(reset_ptr + rows * T + t, mask=row_mask, other=1) == 0)[:, None]
    previous_rows = previous_state_rows(h0_ptr, h_seq_ptr, rows, t, T, H)
    recurrent_i, recurrent_f, recurrent_g, recurrent_o = _sequence_recurrence(
        previous_rows, row_mask[:, None], keep, weight_t_ptr, H, units, DOT_PRECISION, ACC, BLOCK_B, BLOCK_K
    )
    c_prev = tl.where(keep, previous_cell(c0_ptr, c_seq_ptr, rows, units, mask, t, T, H, ACC), 0.0)
    c = tl.load(c_seq_ptr + sequence_offsets, mask=mask, other=0.0).to(ACC)
    x_offsets = (rows[:, None] * T + t) * (4 * H) + units[None, :]
    input_gate, forget_gate, candidate, output_gate = _gates(
        x_ptr, x_offsets, mask, H, recurrent_i, recurrent_f, recurrent_g, recurrent_o,
        gate_bias(bias_ptr, 0, H, units, HAS_BIAS, ACC), gate_bias(bias_ptr, 1, H, units, HAS_BIAS, ACC),
        gate_bias(bias_ptr, 2, H, units, HAS_BIAS, ACC), gate_bias(bias_ptr, 3, H, units, HAS_BIAS, ACC), ACC,
    )
    tanh_c = tanh(c)
    grad_c = tl.load(grad_c_carry_ptr + state_offsets, mask=mask, other=0.0) + grad_h * output_gate * (1.0 - tanh_c * tanh_c)
    grad_x_dtype = grad_x_ptr.dtype.element_ty
    tl.store(grad_x_ptr + x_offsets, (grad_c * candidate * input_gate * (1.0 - input_gate)).to(grad_x_dtype), mask=mask)
    tl.store(grad_x_ptr + x_offsets + H, (grad_c * c_prev * forget_gate * (1.0 - forget_gate)).to(grad_x_dtype), mask=mask)
    tl.store(grad_x_ptr + x_offsets + 2 * H, (grad_c * input_gate * (1.0 - candidate * candidate)).to(grad_x_dtype), mask=mask)
    tl.store(grad_x_ptr + x_offsets + 3 * H, (grad_h * tanh_c * output_gate * (1.0 - output_gate)).to(grad_x_dtype), mask=mask)
    # No gradient crosses a reset.
    tl.store(grad_c_carry_ptr + state_offsets, tl.where(keep, grad_c * forget_gate, 0.0), mask=mask)


def block_hidden(hidden_size: int) -> int:
    """Hidden units padded to a power of two of at least 16 (the smallest tensor-core dot)."""
    return max(16, triton.next_power_of_2(hidden_size))


def weight_resident(hidden_size: int, dtype: torch.dtype, square_tiles: int) -> bool:
    block = block_hidden(hidden_size)
    copies = 2 if dtype == torch.float32 else 1
    return square_tiles * block * block * dtype.itemsize * copies <= RESIDENT_WEIGHT_BYTES


def whole_sequence_launch(kernel_name: str, hidden_size: int) -> dict:
    """BLOCK_H, BLOCK_K and num_warps of a whole-sequence kernel at this H."""
    block = block_hidden(hidden_size)
    streamed_slice, warps = WHOLE_SEQUENCE_LAUNCH[kernel_name][block]
    return dict(BLOCK_H=block, BLOCK_K=streamed_slice, num_warps=warps)


def whole_sequence(hidden_size: int, direction: str) -> bool:
    """Whether `direction` ("forward" or "backward") runs the one-launch whole-sequence kernel
    (all H units of a row block per program) rather than one split launch per step."""
    return hidden_size <= WHOLE_SEQUENCE_MAX_HIDDEN[direction]


def step_grid(batch_size: int, hidden_size: int) -> tuple[int, int]:
    """Programs of a per-step launch: row blocks x unit blocks."""
    return triton.cdiv(batch_size, BLOCK_B), triton.cdiv(hidden_size, STEP_KERNEL_CONFIG["BLOCK_U"])


def check_triton_inputs(op_name: str, x_proj: torch.Tensor, weight_hh: torch.Tensor, *others: torch.Tensor | None) -> None:
    """Errors a fused recurrent kernel raises before launching: dtype, device."""
    if x_proj.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the triton {op_name} supports dtypes {SUPPORTED_DTYPES}, got {x_proj.dtype}")
    devices = {tensor.device for tensor in (x_proj, weight_hh, *others) if tensor is not None}
    if len(devices) != 1:
        raise ValueError(f"all {op_name} inputs must be on one device, got {sorted(map(str, devices))}")
    if not x_proj.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton {op_name} needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU), got {x_proj.device}")


def previous_hidden(h0: torch.Tensor, h_seq: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """The state each step read: h_{t-1} (h0 at t = 0), zero where reset -> [B, T, H]."""
    shifted = torch.cat([h0[:, None], h_seq[:, :-1]], dim=1)
    return shifted.masked_fill(reset[..., None], 0.0)


def weight_gradient(grad_preactivation: torch.Tensor, h_previous: torch.Tensor) -> torch.Tensor:
    """sum over b, t of grad_preactivation[b, t]^T h_previous[b, t]: one GEMM -> [G*H, H]."""
    return grad_preactivation.flatten(0, 1).T @ h_previous.flatten(0, 1)


class _LSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, weight_hh, bias, reset, h0, c0):
        batch_size, length, _ = x_proj.shape
        hidden_size = weight_hh.shape[1]
        h_seq = torch.empty(batch_size, length, hidden_size, dtype=x_proj.dtype, device=x_proj.device)
        # The cell state is kept at accumulator precision for the backward pass.
        c_seq = torch.empty(batch_size, length, hidden_size, dtype=torch.float32, device=x_proj.device)
        h_final, c_final = torch.empty_like(h0), torch.empty_like(c0)
        reset_bytes = reset.view(torch.uint8)
        weight_t = weight_hh.T.contiguous()
        bias_or_dummy = x_proj if bias is None else bias
        with device_guard(x_proj):
            if whole_sequence(hidden_size, "forward"):
                lstm_fwd_kernel[(triton.cdiv(batch_size, BLOCK_B),)](
                    x_proj, weight_t, bias_or_dummy, reset_bytes, h0, c0,
                    h_seq, c_seq, h_final, c_final,
                    batch_size, length, hidden_size,
                    HAS_BIAS=bias is not None, WEIGHT_RESIDENT=weight_resident(hidden_size, weight_hh.dtype, 4),
                    DOT_PRECISION=DOT_PRECISION, ACC=ACCUMULATOR, BLOCK_B=BLOCK_B,
                    **whole_sequence_launch("lstm_fwd_kernel", hidden_size), num_stages=1,
                )
            else:
                for t in range(length):
                    lstm_fwd_step_kernel[step_grid(batch_size, hidden_size)](
                        x_proj, weight_t, bias_or_dummy, reset_bytes, h0, c0, h_seq, c_seq,
                        batch_size, length, hidden_size, t,
                        HAS_BIAS=bias is not None, **STEP_KERNEL_CONFIG,
                    )
                h_final.copy_(h_seq[:, -1])
                c_final.copy_(c_seq[:, -1])
        ctx.save_for_backward(x_proj, weight_hh, bias, reset, h0, c0, h_seq, c_seq)
        return h_seq, h_final, c_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h_seq, grad_h_final, grad_c_final):
        x_proj, weight_hh, bias, reset, h0, c0, h_seq, c_seq = ctx.saved_tensors
        batch_size, length, _ = x_proj.shape
        hidden_size = weight_hh.shape[1]
        grad_x = torch.empty_like(x_proj)
        grad_h0, grad_c0 = torch.empty_like(h0), torch.empty_like(c0)
        reset_bytes = reset.view(torch.uint8)
        weight_t = weight_hh.T.contiguous()
        bias_or_dummy = x_proj if bias is None else bias
        grad_h_seq, grad_h_final = grad_h_seq.contiguous(), grad_h_final.contiguous()
        with device_guard(x_proj):
            if whole_sequence(hidden_size, "backward"):
                lstm_bwd_kernel[(triton.cdiv(batch_size, BLOCK_B),)](
                    x_proj, weight_hh, weight_t, bias_or_dummy, reset_bytes, h0, c0, h_seq, c_seq,
                    grad_h_seq, grad_h_final, grad_c_final.contiguous(),
                    grad_x, grad_h0, grad_c0,
                    batch_size, length, hidden_size,
                    HAS_BIAS=bias is not None, WEIGHT_RESIDENT=weight_resident(hidden_size, weight_hh.dtype, 8),
                    DOT_PRECISION=DOT_PRECISION, ACC=ACCUMULATOR, BLOCK_B=BLOCK_B,
                    **whole_sequence_launch("lstm_bwd_kernel", hidden_size), num_stages=1,
                )
            else:
                grad_c_carry = grad_c_final.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                for t in reversed(range(length)):
                    lstm_bwd_step_kernel[step_grid(batch_size, hidden_size)](
                        x_proj, weight_hh, weight_t, bias_or_dummy, reset_bytes, h0, c0, h_seq, c_seq,
                        grad_h_seq, grad_h_final, grad_c_carry, grad_x,
                        batch_size, length, hidden_size, t,
                        HAS_BIAS=bias is not None, **STEP_KERNEL_CONFIG,
                    )
                keep_first = ~reset[:, 0, None]
                grad_h0.copy_(keep_first * (grad_x[:, 0] @ weight_hh))
                grad_c0.copy_(grad_c_carry)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad_x, previous_hidden(h0, h_seq, reset))
        grad_bias = grad_x.sum(dim=(0, 1)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, grad_h0, grad_c0


def lstm_sequence_triton(
    x_proj: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Same contract as `lstm_sequence_naive`; dtypes float16/bfloat16/float32, any H."""
    h0, c0 = initial_state
    check_triton_inputs("lstm", x_proj, weight_hh, bias, reset, h0, c0)
    h_seq, h_final, c_final = _LSTMTriton.apply(
        x_proj.contiguous(), weight_hh.contiguous(), None if bias is None else bias.contiguous(),
        reset.contiguous(), h0.contiguous(), c0.contiguous(),
    )
    return h_seq, (h_final, c_final)

"""Triton resettable linear scan: h_t = a_t * (0 if reset_t else h_{t-1}) + b_t.

Layout: a, b flattened to [B, T, D] (complex tensors as their float [B, T, D, 2] view, the
complex product done in the kernel). With DECAY_PER_CHANNEL, a is one [D] vector shared by every
batch row and step (S4/S5's discretised eigenvalues): it is read once per program instead of
being expanded to [B, T, D], and its gradient is summed over time in registers ([B, D] per-row
partials, added up by torch). One program owns one batch row and a block of D
channels; it walks T in chunks of CHUNK_T steps with the carried state in registers. A chunk
is one coalesced [CHUNK_T, BLOCK_D] tile load per tensor (D is contiguous), scanned in
registers with `tl.associative_scan` over the affine maps h -> a' h + b, where the reset is
folded into the multiplier (a' = 0 at a reset, which cuts everything before it), then
combined with the carried state. Each element is read and written once, so the kernel runs
at memory bandwidth, and T can be arbitrarily long. Arithmetic is float32 (float64 for
float64/complex128 inputs) whatever the storage dtype.

Backward is the same scan run backwards in time (PyTorch's complex convention: gradients
are conjugate Wirtinger, so multipliers enter conjugated):
    G_t = dL/dh_t (+ dL/dh_T at t = T-1) + conj(a'_{t+1}) G_{t+1}
    dL/db_t = G_t,   dL/da_t = keep_t G_t conj(h_{t-1}),   dL/dh_{-1} = conj(a'_0) G_0
with h_{-1} the initial state, read back from the stored forward output.

Time is walked in reverse by indexing (row r of a backward tile is step T - 1 - chunk * CHUNK_T - r),
so both passes use forward `tl.associative_scan` only.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from kernels import device_guard

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


@triton.jit
def _affine_combine(earlier_a, earlier_x, later_a, later_x):
    """Compose h -> earlier_a h + earlier_x, then h -> later_a h + later_x."""
    return earlier_a * later_a, later_a * earlier_x + later_x


@triton.jit
def _complex_affine_combine(earlier_a_re, earlier_a_im, earlier_x_re, earlier_x_im, later_a_re, later_a_im, later_x_re, later_x_im):
    """`_affine_combine` for complex numbers held as (real, imaginary) pairs."""
    a_re = earlier_a_re * later_a_re - earlier_a_im * later_a_im
    a_im = earlier_a_re * later_a_im + earlier_a_im * later_a_re
    x_re = later_a_re * earlier_x_re - later_a_im * earlier_x_im + later_x_re
    x_im = later_a_re * earlier_x_im + later_a_im * earlier_x_re + later_x_im
    return a_re, a_im, x_re, x_im


@triton.jit
def _load(pointer, offsets, mask, IS_COMPLEX: tl.constexpr, ACC: tl.constexpr):
    """Load elements at `offsets` (in complex units for complex data) as (real, imaginary) in ACC."""
    if IS_COMPLEX:
        pair = tl.load(pointer + tl.expand_dims(offsets, -1) * 2 + tl.arange(0, 2), mask=tl.expand_dims(mask, -1), other=0.0)
        real, imaginary = tl.split(pair.to(ACC))
    else:
        real = tl.load(pointer + offsets, mask=mask, other=0.0).to(ACC)
        imaginary = real
    return real, imaginary


@triton.jit
def _store(pointer, offsets, mask, real, imaginary, IS_COMPLEX: tl.constexpr):
    if IS_COMPLEX:
        pair = tl.join(real, imaginary).to(pointer.dtype.element_ty)
        tl.store(pointer + tl.expand_dims(offsets, -1) * 2 + tl.arange(0, 2), pair, mask=tl.expand_dims(mask, -1))
    else:
        tl.store(pointer + offsets, real.to(pointer.dtype.element_ty), mask=mask)


@triton.jit
def _row(tile, rows, row):
    """tile[row, :] of a [CHUNK_T, BLOCK_D] register tile."""
    return tl.sum(tl.where(rows == row, tile, 0.0), axis=0)


@triton.jit
def linear_scan_fwd_kernel(
    a_ptr, b_ptr, reset_ptr, initial_ptr, h_ptr, final_ptr,
    T, D,
    IS_COMPLEX: tl.constexpr, DECAY_PER_CHANNEL: tl.constexpr, ACC: tl.constexpr, CHUNK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channels < D
    rows = tl.arange(0, CHUNK_T)[:, None]
    carry_re, carry_im = _load(initial_ptr, batch * D + channels, channel_mask, IS_COMPLEX, ACC)
    if DECAY_PER_CHANNEL:
        channel_a_re, channel_a_im = _load(a_ptr, channels, channel_mask, IS_COMPLEX, ACC)
    for chunk_start in range(0, T, CHUNK_T):
        steps = chunk_start + rows
        step_mask = steps < T
        mask = step_mask & channel_mask[None, :]
        offsets = (batch * T + steps) * D + channels[None, :]
        keep = tl.load(reset_ptr + batch * T + steps, mask=step_mask, other=1) == 0
        if DECAY_PER_CHANNEL:
            a_re = tl.broadcast_to(channel_a_re[None, :], (CHUNK_T, BLOCK_D))
            a_im = tl.broadcast_to(channel_a_im[None, :], (CHUNK_T, BLOCK_D))
        else:
            a_re, a_im = _load(a_ptr, offsets, mask, IS_COMPLEX, ACC)
        b_re, b_im = _load(b_ptr, offsets, mask, IS_COMPLEX, ACC)
        last_row = tl.minimum(T - chunk_start, CHUNK_T) - 1
        if IS_COMPLEX:
            a_re = tl.where(keep, a_re, 0.0)
            a_im = tl.where(keep, a_im, 0.0)
            prod_re, prod_im, sum_re, sum_im = tl.associative_scan(
                (a_re, a_im, b_re, b_im), 0, _complex_affine_combine
            )
            h_re = prod_re * carry_re[None, :] - prod_im * carry_im[None, :] + sum_re
            h_im = prod_re * carry_im[None, :] + prod_im * carry_re[None, :] + sum_im
            carry_im = _row(h_im, rows, last_row)
        else:
            a_re = tl.where(keep, a_re, 0.0)
            prod_re, sum_re = tl.associative_scan((a_re, b_re), 0, _affine_combine)
            h_re = prod_re * carry_re[None, :] + sum_re
            h_im = h_re
        carry_re = _row(h_re, rows, last_row)
        _store(h_ptr, offsets, mask, h_re, h_im, IS_COMPLEX)
    _store(final_ptr, batch * D + channels, channel_mask, carry_re, carry_im, IS_COMPLEX)


@triton.jit
def linear_scan_bwd_kernel(
    a_ptr, reset_ptr, initial_ptr, h_ptr, grad_h_ptr, grad_final_ptr,
    grad_a_ptr, grad_b_ptr, grad_initial_ptr,
    T, D,
    IS_COMPLEX: tl.constexpr, DECAY_PER_CHANNEL: tl.constexpr, ACC: tl.constexpr, CHUNK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_mask = channels < D
    rows = tl.arange(0, CHUNK_T)[:, None]
    initial_re, initial_im = _load(initial_ptr, batch * D + channels, channel_mask, IS_COMPLEX, ACC)
    if DECAY_PER_CHANNEL:
        channel_a_re, channel_a_im = _load(a_ptr, channels, channel_mask, IS_COMPLEX, ACC)
        # dL/da summed over this batch row's steps.
        grad_channel_a_re = tl.zeros((BLOCK_D,), ACC)
        grad_channel_a_im = tl.zeros((BLOCK_D,), ACC)
    # The final-state gradient enters G_{T-1} through a multiplier of 1 on the carry.
    carry_re, carry_im = _load(grad_final_ptr, batch * D + channels, channel_mask, IS_COMPLEX, ACC)
    for chunk in range(0, tl.cdiv(T, CHUNK_T)):
        # Row r of the tile is time step T - 1 - chunk * CHUNK_T - r: the scan runs backwards in time.
        steps = T - 1 - chunk * CHUNK_T - rows
        step_mask = steps >= 0
        mask = step_mask & channel_mask[None, :]
        offsets = (batch * T + steps) * D + channels[None, :]
        has_next = step_mask & (steps + 1 < T)
        next_mask = has_next & channel_mask[None, :]
        next_keep = tl.load(reset_ptr + batch * T + steps + 1, mask=has_next, other=1) == 0
        if DECAY_PER_CHANNEL:
            next_a_re = tl.where(next_mask, channel_a_re[None, :], 0.0)
            next_a_im = tl.where(next_mask, channel_a_im[None, :], 0.0)
        else:
            next_a_re, next_a_im = _load(a_ptr, offsets + D, next_mask, IS_COMPLEX, ACC)
        multiplier_re = tl.where(steps == T - 1, 1.0, tl.where(next_keep, next_a_re, 0.0))
        grad_re, grad_im = _load(grad_h_ptr, offsets, mask, IS_COMPLEX, ACC)
        has_previous = step_mask & (steps > 0)
        previous_re, previous_im = _load(h_ptr, offsets - D, has_previous & channel_mask[None, :], IS_COMPLEX, ACC)
        previous_re = tl.where(steps == 0, initial_re[None, :], previous_re)
        keep = tl.load(reset_ptr + batch * T + steps, mask=step_mask, other=1) == 0
        last_row = tl.minimum(T - chunk * CHUNK_T, CHUNK_T) - 1
        if IS_COMPLEX:
            multiplier_im = -tl.where(steps == T - 1, 0.0, tl.where(next_keep, next_a_im, 0.0))
            prod_re, prod_im, sum_re, sum_im = tl.associative_scan(
                (multiplier_re, multiplier_im, grad_re, grad_im), 0, _complex_affine_combine
            )
            total_re = prod_re * carry_re[None, :] - prod_im * carry_im[None, :] + sum_re
            total_im = prod_re * carry_im[None, :] + prod_im * carry_re[None, :] + sum_im
            previous_im = tl.where(steps == 0, initial_im[None, :], previous_im)
            grad_a_re = tl.where(keep, total_re * previous_re + total_im * previous_im, 0.0)
            grad_a_im = tl.where(keep, total_im * previous_re - total_re * previous_im, 0.0)
            carry_im = _row(total_im, rows, last_row)
        else:
            prod_re, sum_re = tl.associative_scan((multiplier_re, grad_re), 0, _affine_combine)
            total_re = prod_re * carry_re[None, :] + sum_re
            total_im = total_re
            grad_a_re = tl.where(keep, total_re * previous_re, 0.0)
            grad_a_im = grad_a_re
        carry_re = _row(total_re, rows, last_row)
        _store(grad_b_ptr, offsets, mask, total_re, total_im, IS_COMPLEX)
        if DECAY_PER_CHANNEL:
            grad_channel_a_re += tl.sum(tl.where(mask, grad_a_re, 0.0), axis=0)
            grad_channel_a_im += tl.sum(tl.where(mask, grad_a_im, 0.0), axis=0)
        else:
            _store(grad_a_ptr, offsets, mask, grad_a_re, grad_a_im, IS_COMPLEX)
    if DECAY_PER_CHANNEL:
        _store(grad_a_ptr, batch * D + channels, channel_mask, grad_channel_a_re, grad_channel_a_im, IS_COMPLEX)
        first_a_re = channel_a_re
        first_a_im = channel_a_im
    else:
        first_a_re, first_a_im = _load(a_ptr, batch * T * D + channels, channel_mask, IS_COMPLEX, ACC)
    first_keep = tl.load(reset_ptr + batch * T) == 0
    first_a_re = tl.where(first_keep, first_a_re, 0.0)
    first_a_im = tl.where(first_keep, first_a_im, 0.0)
    if IS_COMPLEX:
        grad_initial_re = first_a_re * carry_re + first_a_im * carry_im
        grad_initial_im = first_a_re * carry_im - first_a_im * carry_re
    else:
        grad_initial_re = first_a_re * carry_re
        grad_initial_im = grad_initial_re
    _store(grad_initial_ptr, batch * D + channels, channel_mask, grad_initial_re, grad_initial_im, IS_COMPLEX)


def _launch_config(batch_size: int, channels: int, is_complex: bool) -> tuple[int, int]:
    """(CHUNK_T, BLOCK_D): 64 channels make 256-byte coalesced rows (512 for complex64);
    narrower blocks when batch * channel blocks would leave an H100's 132 SMs underfilled.
    Compiled for sm_90a at 4 warps these tiles take 144-240 registers, no spills."""
    block_d = min(64, triton.next_power_of_2(max(channels, 1)))
    while block_d > 16 and batch_size * triton.cdiv(channels, block_d) < 2 * 132:
        block_d //= 2
    chunk_t = 16 if is_complex else 32
    return chunk_t, block_d


def _float_view(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype in (torch.float64, torch.complex128) else tl.float32


class _LinearScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, reset, initial_state):
        batch_size, length, channels = b.shape
        h = torch.empty_like(b)
        final_state = torch.empty_like(initial_state)
        chunk_t, block_d = _launch_config(batch_size, channels, b.is_complex())
        grid = (batch_size, triton.cdiv(channels, block_d))
        reset_bytes = reset.view(torch.uint8)
        with device_guard(b):
            linear_scan_fwd_kernel[grid](
                _float_view(a), _float_view(b), reset_bytes, _float_view(initial_state), _float_view(h),
                _float_view(final_state),
                length, channels,
                IS_COMPLEX=b.is_complex(), DECAY_PER_CHANNEL=a.dim() == 1, ACC=_accumulator(b.dtype), CHUNK_T=chunk_t,
                BLOCK_D=block_d,
            )
        ctx.save_for_backward(a, reset_bytes, initial_state, h)
        return h, final_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_final):
        a, reset_bytes, initial_state, h = ctx.saved_tensors
        batch_size, length, channels = h.shape
        per_channel = a.dim() == 1
        grad_h = grad_h.contiguous()
        grad_final = grad_final.contiguous()
        # A per-channel decay gets one partial gradient per batch row, summed below.
        grad_a = torch.empty_like(initial_state) if per_channel else torch.empty_like(a)
        grad_b = torch.empty_like(h)
        grad_initial = torch.empty_like(initial_state)
        chunk_t, block_d = _launch_config(batch_size, channels, h.is_complex())
        grid = (batch_size, triton.cdiv(channels, block_d))
        with device_guard(h):
            linear_scan_bwd_kernel[grid](
                _float_view(a), reset_bytes, _float_view(initial_state), _float_view(h),
                _float_view(grad_h), _float_view(grad_final),
                _float_view(grad_a), _float_view(grad_b), _float_view(grad_initial),
                length, channels,
                IS_COMPLEX=h.is_complex(), DECAY_PER_CHANNEL=per_channel, ACC=_accumulator(h.dtype), CHUNK_T=chunk_t,
                BLOCK_D=block_d,
            )
        return grad_a.sum(0) if per_channel else grad_a, grad_b, None, grad_initial


def linear_scan_triton(
    a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `linear_scan_naive`: a [B, T, *S] or per-channel [*S], b [B, T, *S], reset
    bool [B, T], initial_state [B, *S] -> (h [B, T, *S], h_T [B, *S]). Dtypes: float16/bfloat16/
    float32/float64/complex64/complex128 (arithmetic in float32, or float64 for 64-bit inputs); T >= 1."""
    if a.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the triton linear scan supports dtypes {SUPPORTED_DTYPES}, got {a.dtype}")
    if initial_state.dtype != a.dtype:
        raise ValueError(f"initial_state must have the dtype of a ({a.dtype}), got {initial_state.dtype}")
    devices = {a.device, b.device, reset.device, initial_state.device}
    if len(devices) != 1:
        raise ValueError(f"a, b, reset and initial_state must be on one device, got {sorted(map(str, devices))}")
    if not a.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton linear scan needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU), got {a.device}")
    batch_size, length = b.shape[:2]
    state_shape = b.shape[2:]
    channels = math.prod(state_shape)
    flat_a = a.reshape(channels) if a.dim() == b.dim() - 2 else a.reshape(batch_size, length, channels)
    flat_a = flat_a.contiguous()
    flat_b = b.reshape(batch_size, length, channels).contiguous()
    flat_initial = initial_state.reshape(batch_size, channels).contiguous()
    h, final_state = _LinearScanTriton.apply(flat_a, flat_b, reset.contiguous(), flat_initial)
    return h.view(batch_size, length, *state_shape), final_state.view(batch_size, *state_shape)

"""Triton selective scan (Mamba-1's S6) with resets, initial state in and final state out.

    h_t = exp(delta_t A) * (0 if reset_t else h_{t-1}) + delta_t u_t B_t
    y_t = (sum_n C_t h_t + D u_t) * silu(z_t)

Layout: u, delta, z [B, T, D]; A [D, N]; B, C [B, T, N]; states [B, D, N], all contiguous.
One program owns one batch row and BLOCK_D channels with all N states (N padded to the
power of two BLOCK_N, the padding masked). It walks T in chunks of CHUNK_T steps: a chunk is
a [CHUNK_T, BLOCK_D, BLOCK_N] register tile of affine maps h -> a h + b (a = exp(delta A),
zeroed at a reset, which cuts everything before it; b = delta u B), scanned along time with
`tl.associative_scan` over its 2-D view [CHUNK_T, BLOCK_D * BLOCK_N], then combined with the
carried state and contracted with C. The [B, D, N] state never goes to memory per step; the
forward pass stores it only at chunk starts ([B, T / CHUNK_T, D, N], float32) for the backward.
Arithmetic is float32.

Backward, per chunk from the last to the first: recompute h_{t-1} from the stored chunk-start
state (a scan of the previous steps' maps), then run the reverse recurrence
    G_t = dL/dh_t = C_t dy_t + keep_{t+1} a_{t+1} G_{t+1},    G_{T-1} += dL/dh_T
as a reverse scan (a forward `tl.associative_scan` of the time-flipped tile, flipped back with
`tl.flip`, which only moves bits; the scan's own reverse flag is not used: its lowering differs from the
interpreter's and has been reported wrong for non-commutative combines), where
dy = dL/dy_t * silu(z_t) is the gradient of the ungated output. Then
    du_t = D dy_t + delta_t sum_n G B_t,    dB_t = sum_d G delta_t u_t,    dC_t = sum_d dy_t h_t,
    dz_t = dL/dy_t (sum_n C h + D u) silu'(z_t),    dD = sum_{b,t} dy u,
    dA = sum_{b,t} g delta,   ddelta_t = u_t sum_n G B_t + sum_n g A,   g = G keep_t h_{t-1} a_t,
    dL/dh_{-1} = keep_0 a_0 G_0.
dB and dC sum over channels. The backward grid is (B, G) with G = min(channel blocks,
MAX_CHANNEL_GROUPS): program g walks channel blocks g, g + G, ... in turn and adds each block's
dB, dC into its own partial [B, T, N] (in a fixed order, no atomics), and torch adds the G
partials up afterwards: deterministic, and the buffers are at most MAX_CHANNEL_GROUPS times the
gradient whatever D and N. dA and dD likewise sum per-batch-row partials.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels import device_guard

SUPPORTED_DTYPES = (torch.float32,)
MAX_STATE_SIZE = 128
CHUNK_T = 16
# Elements of one [CHUNK_T, BLOCK_D, BLOCK_N] tile (not yet tuned on a GPU); the backward
# keeps about twice as many tiles alive as the forward, so it takes half the channels.
FORWARD_TILE_ELEMENTS = 4096
BACKWARD_TILE_ELEMENTS = 2048
# Channel-block groups of the backward grid, each with its own dB/dC partial [B, T, N].
MAX_CHANNEL_GROUPS = 8


@triton.jit
def _affine_combine(earlier_a, earlier_x, later_a, later_x):
    """Compose h -> earlier_a h + earlier_x, then h -> later_a h + later_x."""
    return earlier_a * later_a, later_a * earlier_x + later_x


@triton.jit
def _scan_time(multiplier, value, REVERSE: tl.constexpr, CHUNK_T: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Inclusive scan along time (axis 0) of the affine maps of a [CHUNK_T, BLOCK_D, BLOCK_N]
    tile, run on its 2-D view. Forward: (prod_{k<=r} m_k, S_r = m_r S_{r-1} + v_r); reverse:
    (prod_{k>=r} m_k, S_r = m_r S_{r+1} + v_r), as the forward scan of the flipped tile."""
    multiplier = tl.reshape(multiplier, (CHUNK_T, BLOCK_D * BLOCK_N))
    value = tl.reshape(value, (CHUNK_T, BLOCK_D * BLOCK_N))
    if REVERSE:
        multiplier = tl.flip(multiplier, 0)
        value = tl.flip(value, 0)
    product, total = tl.associative_scan((multiplier, value), 0, _affine_combine)
    if REVERSE:
        product = tl.flip(product, 0)
        total = tl.flip(total, 0)
    return tl.reshape(product, (CHUNK_T, BLOCK_D, BLOCK_N)), tl.reshape(total, (CHUNK_T, BLOCK_D, BLOCK_N))


@triton.jit
def _row(tile, rows, row):
    """tile[row] of a [CHUNK_T, ...] register tile."""
    return tl.sum(tl.where(rows == row, tile, 0.0), axis=0)


@triton.jit
def _keep(reset_ptr, batch, T, steps, step_mask):
    """True where step t carries the state over (no reset); False outside [0, T)."""
    return tl.load(reset_ptr + batch * T + steps, mask=step_mask, other=1) == 0


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, reset_ptr, initial_ptr,
    y_ptr, final_ptr, chunk_state_ptr,
    T, D, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, CHUNK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    channel_mask = channels < D
    state_offsets = channels[:, None] * N + states[None, :]
    state_mask = channel_mask[:, None] & (states < N)[None, :]
    rows = tl.arange(0, CHUNK_T)[:, None]
    rows3 = rows[:, :, None]
    A = tl.load(A_ptr + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    carry = tl.load(initial_ptr + batch * D * N + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    num_chunks = tl.cdiv(T, CHUNK_T)
    for chunk in range(num_chunks):
        tl.store(chunk_state_ptr + (batch * num_chunks + chunk) * D * N + state_offsets, carry, mask=state_mask)
        steps = chunk * CHUNK_T + rows
        step_mask = steps < T
        mask = step_mask & channel_mask[None, :]
        offsets = (batch * T + steps) * D + channels[None, :]
        state_step_offsets = (batch * T + steps) * N + states[None, :]
        state_step_mask = step_mask & (states < N)[None, :]
        u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        B = tl.load(B_ptr + state_step_offsets, mask=state_step_mask, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + state_step_offsets, mask=state_step_mask, other=0.0).to(tl.float32)
        keep = _keep(reset_ptr, batch, T, steps, step_mask)
        decay = tl.where(keep[:, :, None], tl.exp(delta[:, :, None] * A[None, :, :]), 0.0)
        drive = (delta * u)[:, :, None] * B[:, None, :]
        product, total = _scan_time(decay, drive, False, CHUNK_T, BLOCK_D, BLOCK_N)
        h = product * carry[None, :, :] + total
        y = tl.sum(h * C[:, None, :], axis=2)
        if HAS_D:
            y += skip[None, :] * u
        if HAS_Z:
            z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
        carry = _row(h, rows3, tl.minimum(T - chunk * CHUNK_T, CHUNK_T) - 1)
    tl.store(final_ptr + batch * D * N + state_offsets, carry.to(final_ptr.dtype.element_ty), mask=state_mask)


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, reset_ptr, chunk_state_ptr, grad_y_ptr, grad_final_ptr,
    grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr, grad_D_ptr, grad_initial_ptr,
    BATCH, T, D, N, NUM_CHANNEL_BLOCKS, NUM_GROUPS,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, CHUNK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    # This program's dB, dC partial [B, T, N]; every channel block it walks adds into it.
    partial_base = group.to(tl.int64) * BATCH * T * N
    for channel_block in range(group, NUM_CHANNEL_BLOCKS, NUM_GROUPS):
        # The previous block's partial dB, dC stores must land before this block adds to them.
        tl.debug_barrier()
        _selective_scan_bwd_block(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, reset_ptr, chunk_state_ptr, grad_y_ptr, grad_final_ptr,
            grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr, grad_D_ptr, grad_initial_ptr,
            batch, channel_block, partial_base, T, D, N,
            HAS_D, HAS_Z, CHUNK_T, BLOCK_D, BLOCK_N,
        )


@triton.jit
def _selective_scan_bwd_block(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, reset_ptr, chunk_state_ptr, grad_y_ptr, grad_final_ptr,
    grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr, grad_D_ptr, grad_initial_ptr,
    batch, channel_block, partial_base, T, D, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, CHUNK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The backward pass of one batch row and one block of BLOCK_D channels (see the module docstring)."""
    channels = channel_block * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    channel_mask = channels < D
    state_offsets = channels[:, None] * N + states[None, :]
    state_mask = channel_mask[:, None] & (states < N)[None, :]
    rows = tl.arange(0, CHUNK_T)[:, None]
    rows3 = rows[:, :, None]
    A = tl.load(A_ptr + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(D_ptr + channels, mask=channel_mask, other=0.0).to(tl.float32)
    grad_carry = tl.load(grad_final_ptr + batch * D * N + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    grad_A = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    grad_D = tl.zeros((BLOCK_D,), tl.float32)
    num_chunks = tl.cdiv(T, CHUNK_T)
    for reverse_chunk in range(num_chunks):
        chunk = num_chunks - 1 - reverse_chunk
        steps = chunk * CHUNK_T + rows
        step_mask = steps < T
        mask = step_mask & channel_mask[None, :]
        offsets = (batch * T + steps) * D + channels[None, :]
        state_step_offsets = (batch * T + steps) * N + states[None, :]
        state_step_mask = step_mask & (states < N)[None, :]
        u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        B = tl.load(B_ptr + state_step_offsets, mask=state_step_mask, other=0.0).to(tl.float32)
        C = tl.load(C_ptr + state_step_offsets, mask=state_step_mask, other=0.0).to(tl.float32)
        keep = _keep(reset_ptr, batch, T, steps, step_mask)

        # h_{t-1}: row r > 0 applies step t-1's map to the running state; row 0 is the identity,
        # so the scan starts from the stored state at the chunk start.
        has_previous = (rows > 0) & step_mask
        previous_mask = has_previous & channel_mask[None, :]
        previous_u = tl.load(u_ptr + offsets - D, mask=previous_mask, other=0.0).to(tl.float32)
        previous_delta = tl.load(delta_ptr + offsets - D, mask=previous_mask, other=0.0).to(tl.float32)
        previous_B = tl.load(B_ptr + state_step_offsets - N, mask=has_previous & (states < N)[None, :], other=0.0)
        previous_keep = _keep(reset_ptr, batch, T, steps - 1, has_previous)
        previous_decay = tl.where(
            has_previous[:, :, None],
            tl.where(previous_keep[:, :, None], tl.exp(previous_delta[:, :, None] * A[None, :, :]), 0.0),
            1.0,
        )
        previous_drive = (previous_delta * previous_u)[:, :, None] * previous_B.to(tl.float32)[:, None, :]
        product, total = _scan_time(previous_decay, previous_drive, False, CHUNK_T, BLOCK_D, BLOCK_N)
        chunk_start_state = tl.load(
            chunk_state_ptr + (batch * num_chunks + chunk) * D * N + state_offsets, mask=state_mask, other=0.0
        )
        carried = tl.where(keep[:, :, None], product * chunk_start_state[None, :, :] + total, 0.0)
        decay = tl.exp(delta[:, :, None] * A[None, :, :])
        h = decay * carried + (delta * u)[:, :, None] * B[:, None, :]

        grad_out = tl.load(grad_y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            ungated = tl.sum(h * C[:, None, :], axis=2)
            if HAS_D:
                ungated += skip[None, :] * u
            grad_z = grad_out * ungated * gate * (1.0 + z * (1.0 - gate))
            tl.store(grad_z_ptr + offsets, grad_z.to(grad_z_ptr.dtype.element_ty), mask=mask)
            grad_ungated = grad_out * z * gate
        else:
            grad_ungated = grad_out

        # G_t = C_t dy_t + keep_{t+1} a_{t+1} G_{t+1}; past the last step the multiplier is 1,
        # which carries dL/dh_T (the initial grad_carry) into G_{T-1}.
        has_next = steps + 1 < T
        next_delta = tl.load(delta_ptr + offsets + D, mask=has_next & channel_mask[None, :], other=0.0).to(tl.float32)
        next_keep = _keep(reset_ptr, batch, T, steps + 1, has_next)
        next_decay = tl.where(
            has_next[:, :, None],
            tl.where(next_keep[:, :, None], tl.exp(next_delta[:, :, None] * A[None, :, :]), 0.0),
            1.0,
        )
        product, total = _scan_time(
            next_decay, grad_ungated[:, :, None] * C[:, None, :], True, CHUNK_T, BLOCK_D, BLOCK_N
        )
        grad_h = product * grad_carry[None, :, :] + total
        grad_carry = _row(grad_h, rows3, 0)

        grad_h_B = tl.sum(grad_h * B[:, None, :], axis=2)
        grad_u = delta * grad_h_B
        if HAS_D:
            grad_u += skip[None, :] * grad_ungated
            grad_D += tl.sum(grad_ungated * u, axis=0)
        # dL/d(delta_t A) for every (channel, state).
        grad_exponent = grad_h * carried * decay
        grad_delta = u * grad_h_B + tl.sum(grad_exponent * A[None, :, :], axis=2)
        grad_A += tl.sum(grad_exponent * delta[:, :, None], axis=0)
        tl.store(grad_u_ptr + offsets, grad_u.to(grad_u_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_delta_ptr + offsets, grad_delta.to(grad_delta_ptr.dtype.element_ty), mask=mask)
        grad_B = tl.sum(grad_h * (delta * u)[:, :, None], axis=1)
        grad_C = tl.sum(grad_ungated[:, :, None] * h, axis=1)
        partial_offsets = partial_base + state_step_offsets
        grad_B += tl.load(grad_B_ptr + partial_offsets, mask=state_step_mask, other=0.0)
        grad_C += tl.load(grad_C_ptr + partial_offsets, mask=state_step_mask, other=0.0)
        tl.store(grad_B_ptr + partial_offsets, grad_B, mask=state_step_mask)
        tl.store(grad_C_ptr + partial_offsets, grad_C, mask=state_step_mask)

    first_keep = tl.load(reset_ptr + batch * T) == 0
    first_delta = tl.load(delta_ptr + batch * T * D + channels, mask=channel_mask, other=0.0).to(tl.float32)
    grad_initial = tl.where(first_keep, tl.exp(first_delta[:, None] * A) * grad_carry, 0.0)
    tl.store(grad_initial_ptr + batch * D * N + state_offsets, grad_initial.to(grad_initial_ptr.dtype.element_ty),
             mask=state_mask)
    tl.store(grad_A_ptr + batch * D * N + state_offsets, grad_A, mask=state_mask)
    if HAS_D:
        tl.store(grad_D_ptr + batch * D + channels, grad_D, mask=channel_mask)


def _launch_config(channels: int, state_size: int, tile_elements: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N): all N states (padded to a power of two) and as many channels as fit
    a [CHUNK_T, BLOCK_D, BLOCK_N] tile of `tile_elements`."""
    block_n = triton.next_power_of_2(state_size)
    block_d = min(triton.next_power_of_2(channels), max(1, tile_elements // (CHUNK_T * block_n)))
    return block_d, block_n


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, reset, initial_state):
        batch_size, length, channels = u.shape
        state_size = A.shape[1]
        y = torch.empty_like(u)
        final_state = torch.empty_like(initial_state)
        num_chunks = triton.cdiv(length, CHUNK_T)
        chunk_states = torch.empty(batch_size, num_chunks, channels, state_size, device=u.device, dtype=torch.float32)
        reset_bytes = reset.view(torch.uint8)
        block_d, block_n = _launch_config(channels, state_size, FORWARD_TILE_ELEMENTS)
        with device_guard(u):
            selective_scan_fwd_kernel[(batch_size, triton.cdiv(channels, block_d))](
                u, delta, A, B, C, u if D is None else D, u if z is None else z, reset_bytes, initial_state,
                y, final_state, chunk_states,
                length, channels, state_size,
                HAS_D=D is not None, HAS_Z=z is not None, CHUNK_T=CHUNK_T, BLOCK_D=block_d, BLOCK_N=block_n,
            )
        ctx.save_for_backward(u, delta, A, B, C, D, z, reset_bytes, chunk_states)
        return y, final_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_final):
        u, delta, A, B, C, D, z, reset_bytes, chunk_states = ctx.saved_tensors
        batch_size, length, channels = u.shape
        state_size = A.shape[1]
        block_d, block_n = _launch_config(channels, state_size, BACKWARD_TILE_ELEMENTS)
        channel_blocks = triton.cdiv(channels, block_d)
        groups = min(channel_blocks, MAX_CHANNEL_GROUPS)
        grad_u = torch.empty_like(u)
        grad_delta = torch.empty_like(delta)
        grad_z = None if z is None else torch.empty_like(z)
        grad_initial = torch.empty(batch_size, channels, state_size, device=u.device, dtype=u.dtype)
        partial = {"device": u.device, "dtype": torch.float32}
        grad_A_rows = torch.empty(batch_size, channels, state_size, **partial)
        grad_D_rows = None if D is None else torch.empty(batch_size, channels, **partial)
        # Zeroed: each group adds its channel blocks' dB, dC into its partial.
        grad_B_groups = torch.zeros(groups, batch_size, length, state_size, **partial)
        grad_C_groups = torch.zeros(groups, batch_size, length, state_size, **partial)
        with device_guard(u):
            selective_scan_bwd_kernel[(batch_size, groups)](
                u, delta, A, B, C, u if D is None else D, u if z is None else z, reset_bytes, chunk_states,
                grad_y.contiguous(), grad_final.contiguous(),
                grad_u, grad_delta, grad_u if z is None else grad_z, grad_A_rows, grad_B_groups, grad_C_groups,
                grad_A_rows if D is None else grad_D_rows, grad_initial,
                batch_size, length, channels, state_size, channel_blocks, groups,
                HAS_D=D is not None, HAS_Z=z is not None, CHUNK_T=CHUNK_T, BLOCK_D=block_d, BLOCK_N=block_n,
            )
        grad_D = None if D is None else grad_D_rows.sum(0).to(D.dtype)
        return (
            grad_u, grad_delta, grad_A_rows.sum(0).to(A.dtype), grad_B_groups.sum(0).to(B.dtype),
            grad_C_groups.sum(0).to(C.dtype), grad_D, grad_z, None, grad_initial,
        )


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `selective_scan_naive` with reset and initial_state given (shapes are
    checked by `kernels.selective_scan.selective_scan`): y [B, T, D], final state [B, D, N].
    float32 only; N <= MAX_STATE_SIZE; T >= 1."""
    if u.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the triton selective scan supports dtypes {SUPPORTED_DTYPES}, got {u.dtype}")
    if A.shape[1] > MAX_STATE_SIZE:
        raise ValueError(f"the triton selective scan supports state sizes N <= {MAX_STATE_SIZE}, got {A.shape[1]}")
    if not u.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton selective scan needs CUDA tensors (or TRITON_INTERPRET=1 to run on CPU), got {u.device}")
    optional = [None if tensor is None else tensor.contiguous() for tensor in (D, z)]
    return _SelectiveScanTriton.apply(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), *optional,
        reset.contiguous(), initial_state.contiguous(),
    )


__all__ = ["MAX_CHANNEL_GROUPS", "MAX_STATE_SIZE", "SUPPORTED_DTYPES", "selective_scan_triton"]

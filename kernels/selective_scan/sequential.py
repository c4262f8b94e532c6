"""Selective scan for the CPU: a loop over time with a hand-written backward.

On a CPU the log-depth "parallel" scan streams [B, T, D, N] tensors through memory about thirty
times (forward and backward), and at PPO's sizes (e.g. 32 x 64 x 128 x 16 floats, 16 MiB each)
those passes run at memory speed. This loop touches one step's state at a time (held as [B, N, D],
channels innermost, 256 KiB at those sizes), which stays in cache, and does a handful of fused ops
per step. It keeps every step's state and decay for the backward pass (2 x [T, B, N, D] floats in all):
recomputing the decay there cost more than storing it. Per step t, with keep_t = 0 where reset_t:

    decay_t = exp(delta_t A) * keep_t              [B, N, D]
    h_t     = decay_t * h_{t-1} + (delta_t u_t) B_t^T
    y_t     = C_t^T h_t                            [B, D]  (before D u and the silu(z) gate)

Backward, t = T-1 .. 0, g the gradient reaching h_t (it starts from the final state's gradient):

    g_t = decay_{t+1} * g_{t+1} + gy_t C_t^T
    grad (delta u)_t = g_t B_t,   grad B_t = g_t^T (delta_t u_t),   grad C_t = h_t^T gy_t
    e_t = g_t * h_{t-1} * decay_t  (gradient of the exponent delta_t A; decay_t is kept from the forward pass):
          grad delta_t += e_t A summed over N,   grad A += e_t delta_t summed over B and T
    grad h_{-1} = decay_0 * g_0

A reset makes decay_t exactly zero, so nothing (value or gradient) crosses it.
"""

from __future__ import annotations

import torch


def _time_major(tensor: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> contiguous [T, B, ...], so that each step's slice is one contiguous block."""
    return tensor.transpose(0, 1).contiguous()


def _decay(delta_step: torch.Tensor, A_transposed: torch.Tensor, keep_step: torch.Tensor | None) -> torch.Tensor:
    """exp(delta_t A) as [B, N, D] from delta_step [B, 1, D] and A^T [N, D], times keep_step [B, 1, 1] where given."""
    decay = torch.mul(delta_step, A_transposed).exp_()
    return decay if keep_step is None else decay.mul_(keep_step)


class _SequentialSelectiveScan(torch.autograd.Function):
    """The states are held as [B, N, D], channels innermost: every op then runs along rows of D values."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, reset, initial_state):
        delta_u, delta_t, B_t, C_t = (_time_major(x) for x in (delta * u, delta, B, C))
        A_transposed = A.T.contiguous()
        keep = _keep_steps(reset, u.dtype)
        # Each step's views, taken once (per-step indexing would cost more than the step's arithmetic).
        steps = zip(delta_t[:, :, None].unbind(0), delta_u[:, :, None].unbind(0), B_t[..., None].unbind(0),
                    C_t[:, :, None].unbind(0), keep)
        state, states, decays, outputs = initial_state.transpose(1, 2), [], [], []
        for delta_row, input_row, B_step, C_row, keep_step in steps:
            # Fresh per-step tensors rather than slices of one [T, B, N, D] buffer: the allocator reuses
            # step-sized blocks, while a fresh buffer that large is page-faulted in on every call.
            decay = _decay(delta_row, A_transposed, keep_step)  # [B, N, D], kept for the backward pass
            state = torch.mul(decay, state).addcmul_(B_step, input_row)
            outputs.append(torch.bmm(C_row, state))  # [B, 1, D]
            states.append(state)
            decays.append(decay)
        ctx.num_steps = len(states)
        ctx.save_for_backward(u, delta, A_transposed, delta_u, B_t, C_t, delta_t, initial_state, *states, *decays)
        return torch.cat(outputs, dim=1), state.transpose(1, 2).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_final):
        u, delta, A_transposed, delta_u, B_t, C_t, delta_t, initial_state, *saved = ctx.saved_tensors
        states, decays = saved[:ctx.num_steps], saved[ctx.num_steps:]
        if grad_final is None:
            grad_state = torch.zeros_like(states[0])
        else:  # a copy in any case: it is updated in place below
            grad_state = grad_final.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        grad_y = torch.zeros_like(delta_u) if grad_y is None else _time_major(grad_y)
        grad_delta_u, grad_delta_exponent = torch.empty_like(delta_u), torch.empty_like(delta_u)
        grad_B, grad_C = torch.empty_like(B_t), torch.empty_like(C_t)
        grad_A_per_row = torch.zeros_like(states[0])
        exponent_grad = torch.empty_like(states[0])  # one step-sized work tensor, reused (it stays in cache)
        # Products with a [B, N, D] state that sum over D are taken as row [B, 1, D] @ state^T [B, D, N]:
        # a transposed operand, which the batched matmul reads several times faster than state @ column.
        steps = zip(grad_y[:, :, None].unbind(0), C_t[..., None].unbind(0), B_t[:, :, None].unbind(0),
                    delta_u[:, :, None].unbind(0), delta_t[:, :, None].unbind(0), decays, states,
                    [initial_state.transpose(1, 2), *states[:-1]], grad_delta_u[:, :, None].unbind(0),
                    grad_B[:, :, None].unbind(0), grad_C[:, :, None].unbind(0),
                    grad_delta_exponent[:, :, None].unbind(0))
        for (grad_row, C_step, B_row, input_row, delta_row, decay, state, previous, grad_input_row, grad_B_row,
             grad_C_row, grad_exponent_row) in reversed(list(steps)):
            grad_state.addcmul_(C_step, grad_row)
            torch.bmm(grad_row, state.transpose(1, 2), out=grad_C_row)
            torch.bmm(B_row, grad_state, out=grad_input_row)
            torch.bmm(input_row, grad_state.transpose(1, 2), out=grad_B_row)
            torch.mul(grad_state, previous, out=exponent_grad).mul_(decay)
            grad_A_per_row.addcmul_(exponent_grad, delta_row)
            torch.sum(exponent_grad.mul_(A_transposed), dim=1, keepdim=True, out=grad_exponent_row)
            grad_state.mul_(decay)
        grad_delta_u, grad_delta_exponent = grad_delta_u.transpose(0, 1), grad_delta_exponent.transpose(0, 1)
        grad_u = grad_delta_u * delta
        grad_delta = grad_delta_u * u + grad_delta_exponent
        grad_A = grad_A_per_row.sum(0).T
        return grad_u, grad_delta, grad_A, grad_B.transpose(0, 1), grad_C.transpose(0, 1), None, grad_state.transpose(1, 2)


def _keep_steps(reset: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Per step: 1 - reset as [B, 1, 1] where some row resets at that step, else None (nothing to drop)."""
    keep = _time_major((~reset).to(dtype))[..., None, None].unbind(0)
    return [keep_step if any_reset else None for keep_step, any_reset in zip(keep, reset.any(dim=0).tolist())]


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    reset: torch.Tensor,
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u, delta [B, T, D]; A [D, N]; B, C [B, T, N]; reset bool [B, T]; initial_state [B, D, N] ->
    (sum_n C_t h_t [B, T, D], final state [B, D, N]), without the D skip and the z gate."""
    return _SequentialSelectiveScan.apply(u, delta, A, B, C, reset, initial_state)

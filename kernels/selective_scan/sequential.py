"""Selective scan for the CPU: a loop over time with a hand-written backward.

On a CPU the log-depth "parallel" scan streams [B, T, D, N] tensors through memory about thirty
times (forward and backward), and at PPO's sizes (e.g. 32 x 64 x 128 x 16 floats, 16 MiB each)
those passes run at memory speed. This loop touches one step's [B, D, N] at a time, which stays
in cache, and does a handful of fused ops per step. Per step t, with keep_t = 0 where reset_t:

    decay_t = exp(delta_t A) * keep_t              [B, D, N]
    h_t     = decay_t * h_{t-1} + (delta_t u_t) B_t^T
    y_t     = h_t C_t                              [B, D]  (before D u and the silu(z) gate)

Backward, t = T-1 .. 0, g the gradient reaching h_t (it starts from the final state's gradient):

    g_t = decay_{t+1} * g_{t+1} + gy_t C_t^T
    grad (delta u)_t = g_t B_t,   grad B_t = g_t^T (delta_t u_t),   grad C_t = h_t^T gy_t
    e_t = g_t * h_{t-1} * decay_t  (gradient of the exponent delta_t A):
          grad delta_t += e_t A summed over N,   grad A += e_t delta_t summed over B and T
    grad h_{-1} = decay_0 * g_0

A reset makes decay_t exactly zero, so nothing (value or gradient) crosses it.
"""

from __future__ import annotations

import torch


def _time_major(tensor: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> contiguous [T, B, ...], so that each step's slice is one contiguous block."""
    return tensor.transpose(0, 1).contiguous()


class _SequentialSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, reset, initial_state):
        length = u.shape[1]
        delta_u, delta_t, B_t, C_t = (_time_major(x) for x in (delta * u, delta, B, C))
        keep = _time_major((~reset).to(u.dtype))[..., None, None].unbind(0)
        reset_steps = reset.any(dim=0).tolist()
        decays = torch.empty((length, *initial_state.shape), dtype=u.dtype, device=u.device)
        states = torch.empty_like(decays)
        outputs = torch.empty((length, *u.shape[::2], 1), dtype=u.dtype, device=u.device)
        # Each step's views, taken once (per-step indexing would cost more than the step's arithmetic).
        steps = zip(delta_t[..., None].unbind(0), delta_u[..., None].unbind(0), B_t[:, :, None, :].unbind(0),
                    C_t[..., None].unbind(0), decays.unbind(0), states.unbind(0), outputs.unbind(0))
        previous = initial_state
        for t, (delta_step, input_step, B_step, C_step, decay, state, output) in enumerate(steps):
            torch.mul(delta_step, A, out=decay)
            decay.exp_()
            if reset_steps[t]:
                decay.mul_(keep[t])
            torch.mul(decay, previous, out=state)
            state.addcmul_(input_step, B_step)
            torch.bmm(state, C_step, out=output)
            previous = state
        ctx.save_for_backward(u, delta, A, delta_u, delta_t, B_t, C_t, decays, states, initial_state)
        return outputs.squeeze(-1).transpose(0, 1), states[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_final):
        u, delta, A, delta_u, delta_t, B_t, C_t, decays, states, initial_state = ctx.saved_tensors
        grad_state = torch.zeros_like(initial_state) if grad_final is None else grad_final.clone()
        grad_y = torch.zeros_like(delta_u) if grad_y is None else _time_major(grad_y)
        grad_delta_u, grad_delta_exponent = torch.empty_like(delta_u), torch.empty_like(delta_u)
        grad_B, grad_C = torch.empty_like(B_t), torch.empty_like(C_t)
        grad_A_per_row = torch.zeros_like(initial_state)
        exponent_grad = torch.empty_like(initial_state)
        previous_states = [initial_state, *states[:-1].unbind(0)]
        steps = zip(grad_y[..., None].unbind(0), grad_y[:, :, None, :].unbind(0), C_t[:, :, None, :].unbind(0),
                    B_t[..., None].unbind(0), delta_u[:, :, None, :].unbind(0), delta_t[..., None].unbind(0),
                    states.unbind(0), previous_states, decays.unbind(0), grad_delta_u[..., None].unbind(0),
                    grad_B[:, :, None, :].unbind(0), grad_C[:, :, None, :].unbind(0), grad_delta_exponent.unbind(0))
        for (grad_output, grad_output_row, C_row, B_step, input_row, delta_step, state, previous, decay,
             grad_input, grad_B_row, grad_C_row, grad_exponent) in reversed(list(steps)):
            grad_state.addcmul_(grad_output, C_row)
            torch.bmm(grad_output_row, state, out=grad_C_row)
            torch.bmm(grad_state, B_step, out=grad_input)
            torch.bmm(input_row, grad_state, out=grad_B_row)
            torch.mul(grad_state, previous, out=exponent_grad)
            exponent_grad.mul_(decay)
            grad_A_per_row.addcmul_(exponent_grad, delta_step)
            torch.sum(exponent_grad.mul_(A), dim=-1, out=grad_exponent)
            grad_state.mul_(decay)
        grad_delta_u, grad_delta_exponent = grad_delta_u.transpose(0, 1), grad_delta_exponent.transpose(0, 1)
        grad_u = grad_delta_u * delta
        grad_delta = grad_delta_u * u + grad_delta_exponent
        return grad_u, grad_delta, grad_A_per_row.sum(0), grad_B.transpose(0, 1), grad_C.transpose(0, 1), None, grad_state


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

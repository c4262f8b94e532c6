"""Log-depth resettable scan in plain torch: odd-even (pairwise) recursion over the
popjaxrl/R2I reset operator.

Elements (A, X, C) combine, "i then j", as
    (A_i, X_i, C_i) . (A_j, X_j, C_j) = (C_j ? A_j : A_j A_i,  C_j ? X_j : A_j X_i + X_j,  C_i or C_j)
so a reset (C = 1) cuts every contribution from before it. Each level combines neighbouring
pairs, scans the half-length sequence recursively, then fills in the even positions: about
2 log2(T) rounds of whole-tensor ops and O(T) work in total (Hillis-Steele would do
O(T log T)). No Python loop over T.

The backward pass is the same scan run in reverse time (a custom autograd function, so
autograd does not record the forward's slices and masks):
    dh_t = g_t + conj(a_{t+1}) dh_{t+1}   (cut where reset_{t+1}),   g = upstream grad of h
    grad b_t = dh_t,  grad a_t = dh_t conj(h_{t-1})  (0 where reset_t),
    grad initial_state = conj(a_0) dh_0  (0 where reset_0)
with conj the identity for real tensors (PyTorch's conjugate-Wirtinger convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _scan(decay: torch.Tensor, value: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Inclusive scan along dim 1; `start` broadcasts against `value`."""
    length = value.shape[1]
    if length == 1:
        return value
    if length % 2:
        # Pad with the identity element (decay 1, value 0, no start) to an even length.
        decay = torch.cat([decay, torch.ones_like(decay[:, :1])], dim=1)
        value = torch.cat([value, torch.zeros_like(value[:, :1])], dim=1)
        start = torch.cat([start, torch.zeros_like(start[:, :1])], dim=1)
    decay_even, decay_odd = decay[:, 0::2], decay[:, 1::2]
    value_even, value_odd = value[:, 0::2], value[:, 1::2]
    start_even, start_odd = start[:, 0::2], start[:, 1::2]
    pair_decay = torch.where(start_odd, decay_odd, decay_odd * decay_even)
    pair_value = torch.where(start_odd, value_odd, decay_odd * value_even + value_odd)
    scanned_odd = _scan(pair_decay, pair_value, start_even | start_odd)
    previous_odd = torch.cat([torch.zeros_like(scanned_odd[:, :1]), scanned_odd[:, :-1]], dim=1)
    scanned_even = torch.where(start_even, value_even, decay_even * previous_odd + value_even)
    interleaved = torch.stack([scanned_even, scanned_odd], dim=2).flatten(1, 2)
    return interleaved[:, :length]


def _cut(reset: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """reset [B, T] viewed to broadcast against [B, T, *S]."""
    return reset.view(*reset.shape, *([1] * (like.dim() - 2)))


def _forward_scan(a, b, reset, initial_state):
    cut = _cut(reset, a)
    carried = torch.where(cut[:, 0], torch.zeros_like(initial_state), initial_state)
    # Fold the carried state into the first element; position 0 then starts a segment.
    first = a[:, :1] * carried[:, None] + b[:, :1]
    value = torch.cat([first, b[:, 1:]], dim=1)
    start = F.pad(cut[:, 1:], [0] * (2 * (a.dim() - 2)) + [1, 0], value=True)
    return _scan(a, value, start), carried


class _ParallelLinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, reset, initial_state):
        hidden, carried = _forward_scan(a, b, reset, initial_state)
        ctx.save_for_backward(a, hidden, reset, carried)
        return hidden, hidden[:, -1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden, grad_final):
        a, hidden, reset, carried = ctx.saved_tensors
        upstream = torch.zeros_like(hidden) if grad_hidden is None else grad_hidden.clone()
        if grad_final is not None:
            upstream[:, -1] += grad_final
        cut = _cut(reset, a)
        a_conj = a.conj()
        # Reverse time: element j is step t = T-1-j, linked to t+1 by conj(a_{t+1}) unless reset_{t+1}.
        next_decay = torch.cat([a_conj[:, 1:], torch.ones_like(a_conj[:, :1])], dim=1)
        next_start = torch.cat([cut[:, 1:], torch.ones_like(cut[:, :1])], dim=1)
        grad_state = _scan(next_decay.flip(1), upstream.flip(1), next_start.flip(1).expand(upstream.shape)).flip(1)
        previous = torch.cat([carried[:, None], hidden[:, :-1]], dim=1)
        previous = torch.where(cut, torch.zeros_like(previous), previous)
        grad_a = grad_state * previous.conj()
        grad_initial = torch.where(cut[:, 0], torch.zeros_like(carried), a_conj[:, 0] * grad_state[:, 0])
        return grad_a, grad_state, None, grad_initial


def linear_scan_parallel(
    a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `linear_scan_naive`, computed in O(log T) parallel rounds."""
    return _ParallelLinearScan.apply(a, b, reset, initial_state)

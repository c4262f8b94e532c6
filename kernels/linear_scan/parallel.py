"""Log-depth resettable scan in plain torch: odd-even (pairwise) recursion over the
popjaxrl/R2I reset operator.

Elements (A, X, C) combine, "i then j", as
    (A_i, X_i, C_i) . (A_j, X_j, C_j) = (C_j ? A_j : A_j A_i,  C_j ? X_j : A_j X_i + X_j,  C_i or C_j)
so a reset (C = 1) cuts every contribution from before it. Each level combines neighbouring
pairs, scans the half-length sequence recursively, then fills in the even positions: about
2 log2(T) rounds of whole-tensor ops and O(T) work in total (Hillis-Steele would do
O(T log T)). No Python loop over T; autograd gives the backward pass.
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


def linear_scan_parallel(
    a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `linear_scan_naive`, computed in O(log T) parallel rounds."""
    cut = reset.view(*reset.shape, *([1] * (a.dim() - 2)))
    carried = torch.where(cut[:, 0], torch.zeros_like(initial_state), initial_state)
    # Fold the carried state into the first element; position 0 then starts a segment.
    first = a[:, :1] * carried[:, None] + b[:, :1]
    value = torch.cat([first, b[:, 1:]], dim=1)
    start = F.pad(cut[:, 1:], [0] * (2 * (a.dim() - 2)) + [1, 0], value=True)
    hidden = _scan(a, value, start)
    return hidden, hidden[:, -1]

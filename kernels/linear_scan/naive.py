"""Reference resettable linear recurrence: a Python loop over time, obviously correct.

    h_t = a_t * (0 if reset_t else h_{t-1}) + b_t,    h_{-1} = initial_state
"""

from __future__ import annotations

import torch


def linear_scan_naive(
    a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b [B, T, *S] (real or complex), reset bool [B, T], initial_state [B, *S] -> (h [B, T, *S], h_T)."""
    keep = (~reset).view(*reset.shape, *([1] * (a.dim() - 2))).to(a.dtype)
    h = initial_state
    outputs = []
    for t in range(a.shape[1]):
        h = a[:, t] * (keep[:, t] * h) + b[:, t]
        outputs.append(h)
    return torch.stack(outputs, dim=1), h

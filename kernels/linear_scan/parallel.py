"""Log-depth resettable scan in plain torch (Hillis-Steele over the popjaxrl/R2I reset operator).

Elements (A, X, C) combine as
    (A_i, X_i, C_i) . (A_j, X_j, C_j) = (C_j ? A_j : A_j A_i,  C_j ? X_j : A_j X_i + X_j,  C_i or C_j)
so a reset (C = 1) cuts every contribution from before it. ceil(log2 T) rounds of whole-tensor
ops: no Python loop over T, autograd gives the backward pass.
"""

from __future__ import annotations

import torch


def _shift_right(tensor: torch.Tensor, offset: int, fill: float | bool) -> torch.Tensor:
    """tensor[:, t - offset] along dim 1, `fill` for t < offset."""
    padding = tensor.new_full((tensor.shape[0], offset, *tensor.shape[2:]), fill)
    return torch.cat([padding, tensor[:, :-offset]], dim=1)


def linear_scan_parallel(
    a: torch.Tensor, b: torch.Tensor, reset: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `linear_scan_naive`, computed in ceil(log2 T) parallel rounds."""
    cut = reset.view(*reset.shape, *([1] * (a.dim() - 2)))
    carried = torch.where(cut[:, 0], torch.zeros_like(initial_state), initial_state)
    # Fold the carried state into the first element and start a segment there.
    first = a[:, :1] * carried[:, None] + b[:, :1]
    decay, value = a, torch.cat([first, b[:, 1:]], dim=1)
    segment_start = cut.clone()
    segment_start[:, 0] = True
    offset = 1
    while offset < a.shape[1]:
        previous_decay = _shift_right(decay, offset, 1.0)
        previous_value = _shift_right(value, offset, 0.0)
        previous_start = _shift_right(segment_start, offset, False)
        value = torch.where(segment_start, value, decay * previous_value + value)
        decay = torch.where(segment_start, decay, decay * previous_decay)
        segment_start = segment_start | previous_start
        offset *= 2
    return value, value[:, -1]

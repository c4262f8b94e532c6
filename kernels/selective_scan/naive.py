"""Reference selective scan (Mamba-1's S6 recurrence): a Python loop over time, obviously correct.

Per channel d and state n, with the state dropped where a new episode starts:

    h_t = exp(delta_t A) * (0 if reset_t else h_{t-1}) + delta_t B_t u_t     (h_{-1} = initial_state)
    y_t = sum_n C_t h_t + D u_t,    then  y_t * silu(z_t)  when z is given
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_naive(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u, delta, z [B, T, D]; A [D, N]; B, C [B, T, N]; D [D]; reset bool [B, T];
    initial_state [B, D, N] -> (y [B, T, D], final state [B, D, N]), in the inputs' dtype."""
    batch_size, length, channels = u.shape
    if reset is None:
        reset = torch.zeros(batch_size, length, dtype=torch.bool, device=u.device)
    h = initial_state if initial_state is not None else u.new_zeros(batch_size, channels, A.shape[1])
    outputs = []
    for t in range(length):
        carried = torch.where(reset[:, t, None, None], torch.zeros_like(h), h)
        decay = torch.exp(delta[:, t, :, None] * A)
        h = decay * carried + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        outputs.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(outputs, dim=1)
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y, h

"""Reference GRU over a sequence with resets: a Python loop over time, obviously correct.

PyTorch's gate convention (reset r, update z, new n), with the hidden bias of n inside the
reset product; the input projection x_t W_ih^T + b_ih is precomputed by the caller, so

    h = 0 if reset_t else h_{t-1}
    hr, hz, hn = split(h W_hh^T + bias);  xr, xz, xn = split(x_proj_t)
    r = sigmoid(xr + hr),  z = sigmoid(xz + hz),  n = tanh(xn + r hn)
    h_t = (1 - z) n + z h
"""

from __future__ import annotations

import torch


def gru_sequence_naive(
    x_proj: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_proj [B, T, 3H], weight_hh [3H, H], bias [3H] or None, reset bool [B, T],
    initial_state h [B, H] -> (h_seq [B, T, H], h_T [B, H])."""
    h = initial_state
    outputs = []
    for t in range(x_proj.shape[1]):
        h = (~reset[:, t, None]).to(x_proj.dtype) * h
        hidden = h @ weight_hh.T
        if bias is not None:
            hidden = hidden + bias
        hidden_r, hidden_z, hidden_n = hidden.chunk(3, dim=-1)
        input_r, input_z, input_n = x_proj[:, t].chunk(3, dim=-1)
        reset_gate = torch.sigmoid(input_r + hidden_r)
        update_gate = torch.sigmoid(input_z + hidden_z)
        candidate = torch.tanh(input_n + reset_gate * hidden_n)
        h = (1 - update_gate) * candidate + update_gate * h
        outputs.append(h)
    return torch.stack(outputs, dim=1), h

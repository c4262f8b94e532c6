"""Reference LSTM over a sequence with resets: a Python loop over time, obviously correct.

PyTorch's gate order (input i, forget f, cell g, output o); the input projection
x_t W_ih^T + b_ih is precomputed for all steps by the caller (one matmul), so per step

    h, c = (0, 0) if reset_t else (h_{t-1}, c_{t-1})
    i, f, g, o = split(x_proj_t + h W_hh^T + bias)
    c_t = sigmoid(f) c + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)
"""

from __future__ import annotations

import torch


def lstm_sequence_naive(
    x_proj: torch.Tensor,
    weight_hh: torch.Tensor,
    bias: torch.Tensor | None,
    reset: torch.Tensor,
    initial_state: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """x_proj [B, T, 4H], weight_hh [4H, H], bias [4H] or None, reset bool [B, T],
    initial_state (h, c) [B, H] each -> (h_seq [B, T, H], (h_T, c_T))."""
    h, c = initial_state
    outputs = []
    for t in range(x_proj.shape[1]):
        keep = (~reset[:, t, None]).to(x_proj.dtype)
        h, c = keep * h, keep * c
        gates = x_proj[:, t] + h @ weight_hh.T
        if bias is not None:
            gates = gates + bias
        input_gate, forget_gate, cell_candidate, output_gate = gates.chunk(4, dim=-1)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(cell_candidate)
        h = torch.sigmoid(output_gate) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h, c)

"""Stacked GRU with per-step resets.

Each layer runs in two parts: the input projection for all T steps at once (one matmul),
then the recurrence over time, where `gru_recurrence` is the only sequential code and the
piece a fused kernel replaces. The initial state is zero; a reset zeroes the carried hidden
state before the step reads its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memory.base import Backbone, State, StateSpec


def gru_cell(
    input_gates: torch.Tensor, hidden: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> torch.Tensor:
    """One GRU step. input_gates [B, 3H] = x W_ih^T + b_ih (gate order r, z, n as in
    torch.nn.GRU), hidden [B, H], weight_hh [3H, H], bias_hh [3H] -> hidden [B, H]."""
    input_reset, input_update, input_candidate = input_gates.chunk(3, dim=-1)
    hidden_reset, hidden_update, hidden_candidate = F.linear(hidden, weight_hh, bias_hh).chunk(3, dim=-1)
    reset_gate = torch.sigmoid(input_reset + hidden_reset)
    update_gate = torch.sigmoid(input_update + hidden_update)
    candidate = torch.tanh(input_candidate + reset_gate * hidden_candidate)
    return candidate + update_gate * (hidden - candidate)


def gru_recurrence(
    input_gates: torch.Tensor, hidden: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor, reset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU layer over time. input_gates [B, T, 3H], hidden [B, H], reset bool [B, T]
    (zero the carried state before step t) -> (outputs [B, T, H], final hidden)."""
    outputs = []
    for t in range(input_gates.shape[1]):
        hidden = gru_cell(input_gates[:, t], hidden.masked_fill(reset[:, t, None], 0.0), weight_hh, bias_hh)
        outputs.append(hidden)
    return torch.stack(outputs, dim=1), hidden


class GRUBackbone(Backbone):
    """`num_layers` stacked GRU layers; the output is the top layer's hidden state.

    State: "hidden" [B, num_layers, hidden_dim].
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, num_layers: int = 1):
        super().__init__(input_dim, output_dim=hidden_dim)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        # nn.GRUCell only holds the parameters (PyTorch's layout and initialisation); the
        # recurrence above is ours so that resets, and later a fused kernel, fit in.
        self.cells = nn.ModuleList(
            nn.GRUCell(input_dim if layer == 0 else hidden_dim, hidden_dim) for layer in range(num_layers)
        )

    def state_spec(self) -> StateSpec:
        return {"hidden": ((self.num_layers, self.hidden_dim), self.cells[0].weight_hh.dtype)}

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        layer_input, hiddens = x, []
        for layer, parameters in enumerate(self.cells):
            input_gates = F.linear(layer_input, parameters.weight_ih, parameters.bias_ih)
            layer_input, hidden = gru_recurrence(
                input_gates, state["hidden"][:, layer], parameters.weight_hh, parameters.bias_hh, reset
            )
            hiddens.append(hidden)
        return layer_input, {"hidden": torch.stack(hiddens, dim=1)}

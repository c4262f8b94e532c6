"""Stacked LSTM with per-step resets.

Each layer runs in two parts: the input projection for all T steps at once (one matmul),
then the recurrence over time, where `lstm_recurrence` is the only sequential code and the
piece a fused kernel replaces. The initial state is zero; a reset zeroes the carried
(hidden, cell) before the step reads its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memory.base import Backbone, State, StateSpec


def lstm_cell(
    input_gates: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor, weight_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step. input_gates [B, 4H] = x W_ih^T + b_ih + b_hh (gate order i, f, g, o
    as in torch.nn.LSTM), hidden/cell [B, H], weight_hh [4H, H] -> (hidden, cell)."""
    gates = input_gates + F.linear(hidden, weight_hh)
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    hidden = torch.sigmoid(output_gate) * torch.tanh(cell)
    return hidden, cell


def lstm_recurrence(
    input_gates: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor, weight_hh: torch.Tensor, reset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer over time. input_gates [B, T, 4H], hidden/cell [B, H], reset bool [B, T]
    (zero the carried state before step t) -> (outputs [B, T, H], final hidden, final cell)."""
    outputs = []
    for t in range(input_gates.shape[1]):
        starts = reset[:, t, None]
        hidden, cell = lstm_cell(input_gates[:, t], hidden.masked_fill(starts, 0.0), cell.masked_fill(starts, 0.0), weight_hh)
        outputs.append(hidden)
    return torch.stack(outputs, dim=1), hidden, cell


class LSTMBackbone(Backbone):
    """`num_layers` stacked LSTM layers; the output is the top layer's hidden state.

    State: "hidden" and "cell", each [B, num_layers, hidden_dim].
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, num_layers: int = 1):
        super().__init__(input_dim, output_dim=hidden_dim)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        # nn.LSTMCell only holds the parameters (PyTorch's layout and initialisation); the
        # recurrence above is ours so that resets, and later a fused kernel, fit in.
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_dim if layer == 0 else hidden_dim, hidden_dim) for layer in range(num_layers)
        )

    def state_spec(self) -> StateSpec:
        dtype = self.cells[0].weight_hh.dtype
        shape = (self.num_layers, self.hidden_dim)
        return {"hidden": (shape, dtype), "cell": (shape, dtype)}

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        layer_input, hiddens, cells = x, [], []
        for layer, parameters in enumerate(self.cells):
            input_gates = F.linear(layer_input, parameters.weight_ih, parameters.bias_ih + parameters.bias_hh)
            layer_input, hidden, cell = lstm_recurrence(
                input_gates, state["hidden"][:, layer], state["cell"][:, layer], parameters.weight_hh, reset
            )
            hiddens.append(hidden)
            cells.append(cell)
        return layer_input, {"hidden": torch.stack(hiddens, dim=1), "cell": torch.stack(cells, dim=1)}

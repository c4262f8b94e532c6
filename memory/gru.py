"""Stacked GRU with per-step resets.

Each layer runs in two parts: the input projection for all T steps at once (one matmul),
then the recurrence over time through `kernels.gru.gru_sequence` (the fused Triton kernel
on CUDA, a reference loop elsewhere). The initial state is zero; a reset zeroes the carried hidden
state before the step reads its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.gru import gru_sequence
from memory.base import Backbone, State, StateSpec


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
        # recurrence is kernels.gru's, which takes resets.
        self.cells = nn.ModuleList(
            nn.GRUCell(input_dim if layer == 0 else hidden_dim, hidden_dim) for layer in range(num_layers)
        )

    def state_spec(self) -> StateSpec:
        return {"hidden": ((self.num_layers, self.hidden_dim), self.cells[0].weight_hh.dtype)}

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        layer_input, hiddens = x, []
        for layer, parameters in enumerate(self.cells):
            input_gates = F.linear(layer_input, parameters.weight_ih, parameters.bias_ih)
            layer_input, hidden = gru_sequence(
                input_gates, parameters.weight_hh, parameters.bias_hh, reset, state["hidden"][:, layer]
            )
            hiddens.append(hidden)
        return layer_input, {"hidden": torch.stack(hiddens, dim=1)}

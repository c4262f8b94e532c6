"""The memoryless baseline: the same MLP applied to every step on its own."""

from __future__ import annotations

import torch
from torch import nn

from memory.base import Backbone, State, StateSpec


class NoMemory(Backbone):
    """y_t = MLP(x_t): Linear -> LayerNorm -> SiLU -> Linear. Its state is the empty dict."""

    def __init__(self, input_dim: int, hidden_dim: int = 128):
        super().__init__(input_dim, output_dim=hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
        )

    def state_spec(self) -> StateSpec:
        return {}

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self.mlp(x), {}

    def _step(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self.mlp(x), {}

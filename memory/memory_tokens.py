"""M learned memory tokens carried across steps and rewritten by self-attention.

At each step the observation token and the M memory tokens (plus a learned embedding per
slot, so tokens keep their identity) pass through `num_layers` pre-norm attention blocks
together. The output is the updated observation token; the new memory is the updated
memory tokens, layer-normalised so that their scale cannot drift over long episodes.
A reset restores the learned initial tokens, which are trained by gradient like any weight.

State: "memory" [B, num_tokens, hidden_dim]. Inherently sequential: `forward` loops `step`.
"""

from __future__ import annotations

import torch
from torch import nn

from memory.base import Backbone, State, StateSpec
from memory.transformer import AttentionBlock


class MemoryTokensBackbone(Backbone):
    """Observation token + M memory tokens -> self-attention -> (output, new memory)."""

    def __init__(
        self, input_dim: int, hidden_dim: int = 128, num_tokens: int = 4, num_layers: int = 1, num_heads: int = 4
    ):
        super().__init__(input_dim, output_dim=hidden_dim)
        if num_tokens < 1 or num_layers < 1:
            raise ValueError(f"num_tokens and num_layers must be at least 1, got {num_tokens} and {num_layers}")
        self.hidden_dim = hidden_dim
        self.num_tokens = num_tokens
        self.input_projection = nn.Linear(input_dim, hidden_dim)
        self.initial_memory = nn.Parameter(torch.randn(num_tokens, hidden_dim))
        self.slot_embedding = nn.Parameter(0.02 * torch.randn(1 + num_tokens, hidden_dim))
        self.blocks = nn.ModuleList(AttentionBlock(hidden_dim, num_heads) for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.memory_norm = nn.LayerNorm(hidden_dim)

    def state_spec(self) -> StateSpec:
        return {"memory": ((self.num_tokens, self.hidden_dim), self.initial_memory.dtype)}

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The learned initial tokens for every sequence (a view, so gradients reach them)."""
        memory = self.initial_memory.to(self._resolve_device(device))
        return {"memory": memory.expand(batch_size, -1, -1)}

    def _step(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        memory = self.apply_reset(state, reset)["memory"]
        tokens = torch.cat([self.input_projection(x)[:, None], memory], dim=1) + self.slot_embedding
        for block in self.blocks:
            query, key, value = block.project(tokens)
            tokens = block.attend(tokens, query, key, value)
        return self.output_norm(tokens[:, 0]), {"memory": self.memory_norm(tokens[:, 1:])}

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        outputs = []
        for t in range(x.shape[1]):
            output, state = self._step(x[:, t], state, reset[:, t])
            outputs.append(output)
        return torch.stack(outputs, dim=1), state

"""GTrXL: gated transformer-XL (Parisotto et al. 2020, "Stabilizing Transformers for Reinforcement Learning").

Each layer l keeps a memory of the last W activations E^(l-1) that entered it (Transformer-XL's
cached segment); queries of the current steps attend over [memory ++ current] with
Transformer-XL relative-position attention,

    score(i, j) = (q_i + u) . k_j + (q_i + v) . W_R R_(i - j)        R: sinusoidal, per distance

and the residual connections are replaced by GRU-type gates (the paper's best variant):

    Y  = RelMHA(LN(E), LN([M ++ E]));     E' = g(E, ReLU(Y))
    Y' = MLP(LN(E'));                     E'' = g(E', ReLU(Y'))
    g(x, y): r = s(W_r y + U_r x), z = s(W_z y + U_z x - b_g), h = tanh(W_g y + U_g (r * x)),
             g = (1 - z) * x + z * h,     b_g initialised to 2 (the paper's gate bias: each layer starts
                                                near the identity map); other weights PyTorch's default init,
                                                Transformer-XL's position biases u, v zero

Mask, as memrl's `transformer`: a query at step t sees the steps t-W .. t of its own episode, so
an episode never reads activations from before its reset and `forward` over T steps equals T
calls to `step`. (Transformer-XL lets every query of a segment see the whole cached memory, so
its reach depends on where segments are cut; a sliding window of W is what makes chunked and
step-by-step computation agree.)

State, fixed-size: "memory" [B, num_layers, W, hidden_dim] (the layer inputs of the last W steps,
oldest first, zero where empty) and "valid" bool [B, W].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memory.base import Backbone, State, StateSpec
from memory.ssm_common import check_positive
from memory.transformer import episode_window_mask


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions [N] -> [N, dim]: sin and cos at geometric frequencies (Vaswani et al.)."""
    frequencies = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = positions.double()[:, None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


class GRUGate(nn.Module):
    """GTrXL's gating layer g(x, y) in place of the residual x + y."""

    def __init__(self, hidden_dim: int, gate_bias: float):
        super().__init__()
        self.from_y = nn.Linear(hidden_dim, 3 * hidden_dim, bias=False)
        self.from_x = nn.Linear(hidden_dim, 2 * hidden_dim, bias=False)
        self.candidate_from_x = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.gate_bias = nn.Parameter(torch.full((hidden_dim,), gate_bias))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        reset_y, update_y, candidate_y = self.from_y(y).chunk(3, dim=-1)
        reset_x, update_x = self.from_x(x).chunk(2, dim=-1)
        reset = torch.sigmoid(reset_y + reset_x)
        update = torch.sigmoid(update_y + update_x - self.gate_bias)
        candidate = torch.tanh(candidate_y + self.candidate_from_x(reset * x))
        return (1 - update) * x + update * candidate


class GatedTransformerXLLayer(nn.Module):
    """Relative multi-head attention and a position-wise MLP, each behind a GRU gate."""

    def __init__(self, hidden_dim: int, num_heads: int, gate_bias: float, mlp_ratio: int = 4):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim must be divisible by num_heads, got {hidden_dim} and {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_dim // num_heads
        self.attention_norm = nn.LayerNorm(hidden_dim)
        self.query = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.key_value = nn.Linear(hidden_dim, 2 * hidden_dim, bias=False)
        self.position = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.position_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.attention_output = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.attention_gate = GRUGate(hidden_dim, gate_bias)
        self.mlp_norm = nn.LayerNorm(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, mlp_ratio * hidden_dim), nn.ReLU(), nn.Linear(mlp_ratio * hidden_dim, hidden_dim)
        )
        self.mlp_gate = GRUGate(hidden_dim, gate_bias)

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, relative: torch.Tensor, distance: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """hidden [B, Nq, H] (queries), context [B, Nk, H] (memory ++ hidden), relative [W + 1, H]
        (embeddings of distances 0..W), distance long [Nq, Nk] in 0..W, allowed bool [B, Nq, Nk]."""
        batch_size, num_queries, hidden_dim = hidden.shape

        def split_heads(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

        query = split_heads(self.query(self.attention_norm(hidden)))
        key, value = (split_heads(t) for t in self.key_value(self.attention_norm(context)).chunk(2, dim=-1))
        position = self.position(relative).unflatten(-1, (self.num_heads, self.head_dim)).transpose(0, 1)
        content_scores = (query + self.content_bias[:, None]) @ key.transpose(-1, -2)
        position_scores = (query + self.position_bias[:, None]) @ position.transpose(-1, -2)
        scores = content_scores + position_scores.gather(
            -1, distance.expand(batch_size, self.num_heads, -1, -1)
        )
        scores = scores.masked_fill(~allowed[:, None], float("-inf")) / math.sqrt(self.head_dim)
        attended = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch_size, num_queries, hidden_dim)
        hidden = self.attention_gate(hidden, torch.relu(self.attention_output(attended)))
        return self.mlp_gate(hidden, torch.relu(self.mlp(self.mlp_norm(hidden))))


class GTrXLBackbone(Backbone):
    """Linear -> num_layers gated Transformer-XL layers with an episode-masked memory of W steps.

    Options: num_layers, num_heads, memory_length (W), gate_bias (b_g).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        memory_length: int = 32,
        gate_bias: float = 2.0,
    ):
        super().__init__(input_dim, output_dim=hidden_dim)
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads, memory_length=memory_length)
        self.hidden_dim, self.num_layers, self.memory_length = hidden_dim, num_layers, memory_length
        self.input_projection = nn.Linear(input_dim, hidden_dim)
        self.layers = nn.ModuleList(
            GatedTransformerXLLayer(hidden_dim, num_heads, gate_bias) for _ in range(num_layers)
        )
        self.register_buffer(
            "relative_embedding", sinusoidal_embedding(torch.arange(memory_length + 1), hidden_dim).float(),
            persistent=False,
        )

    def state_spec(self) -> StateSpec:
        dtype = self.input_projection.weight.dtype
        return {
            "memory": ((self.num_layers, self.memory_length, self.hidden_dim), dtype),
            "valid": ((self.memory_length,), torch.bool),
        }

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        window = self.memory_length
        allowed, distance, kept = episode_window_mask(reset, state["valid"], window)

        hidden = self.input_projection(x)
        memories = []
        for layer_index, layer in enumerate(self.layers):
            context = torch.cat([state["memory"][:, layer_index], hidden], dim=1)
            memories.append(context[:, -window:].masked_fill(~kept[..., None], 0.0))
            hidden = layer(hidden, context, self.relative_embedding, distance, allowed)
        return hidden, {"memory": torch.stack(memories, dim=1), "valid": kept}

"""Causal transformer over a sliding window of the last W steps of the current episode.

A query at step t attends to the keys of steps t-W .. t that belong to its own episode
(mask: causal AND same episode AND within the window). Positions are distances within the
episode: each head adds a learned bias per distance 0..W (initialised to ALiBi-style
recency slopes), so an episode's outputs do not depend on when it started.

State, fixed-size: per layer the keys and values of the last W steps, oldest first, and a
validity mask (False for empty slots and for steps before the latest reset):
    "keys", "values": [B, num_layers, W, hidden_dim]    "valid": bool [B, W]
`forward` attends over [window ++ chunk] for all T steps at once; `step` is the same code
with T = 1, so the two agree exactly. Attention memory grows as T * (W + T), fine for the
rollout windows RL trains on (T of a few hundred).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memory.base import Backbone, State, StateSpec


def multi_head_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    num_heads: int,
    allowed: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """query [B, Nq, H], keys/values [B, Nk, H], allowed bool [B, Nq, Nk] (every query must
    allow at least one key), bias [num_heads, Nq, Nk] added to the scores -> [B, Nq, H]."""
    batch_size, num_queries, hidden_dim = query.shape
    head_dim = hidden_dim // num_heads

    def split_heads(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unflatten(-1, (num_heads, head_dim)).transpose(1, 2)

    scores = split_heads(query) @ split_heads(keys).transpose(-1, -2) / math.sqrt(head_dim)
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    attended = scores.softmax(dim=-1) @ split_heads(values)
    return attended.transpose(1, 2).reshape(batch_size, num_queries, hidden_dim)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block whose attention reads keys/values chosen by the caller:
    h = h + Attention(LN(h)); h = h + MLP(LN(h))."""

    def __init__(self, hidden_dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim must be divisible by num_heads, got {hidden_dim} and {num_heads}")
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(hidden_dim)
        self.query_key_value = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.attention_output = nn.Linear(hidden_dim, hidden_dim)
        self.mlp_norm = nn.LayerNorm(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, mlp_ratio * hidden_dim), nn.GELU(), nn.Linear(mlp_ratio * hidden_dim, hidden_dim)
        )

    def project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden [B, N, H] -> query, key, value, each [B, N, H]."""
        return self.query_key_value(self.attention_norm(hidden)).chunk(3, dim=-1)

    def attend(
        self,
        hidden: torch.Tensor,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        allowed: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rest of the block for the queries of `hidden` [B, Nq, H] -> [B, Nq, H]."""
        attended = multi_head_attention(query, keys, values, self.num_heads, allowed, bias)
        hidden = hidden + self.attention_output(attended)
        return hidden + self.mlp(self.mlp_norm(hidden))


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Geometric recency slopes 2^(-8 h / num_heads), h = 1..num_heads (Press et al., ALiBi)."""
    return 2.0 ** (-8.0 * torch.arange(1, num_heads + 1) / num_heads)


def episode_window_mask(reset: torch.Tensor, valid: torch.Tensor, window: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which of the W carried slots and T new steps each new step may attend to.

    reset bool [B, T]; valid bool [B, W]: which carried slots hold a step of the current episode.
    Keys are the W carried slots (slot i holds time i - W) followed by the T new steps (time t).
    Returns allowed bool [B, T, W + T] (causal, at most W steps back, same episode, valid),
    distance int64 [T, W + T] (query time - key time, clamped to [0, W]) and kept bool [B, W]
    (which of the last W keys share the final step's episode: the next call's `valid`).
    """
    batch_size, length = reset.shape
    # Episode index of each step: 0 is the episode the carried slots belong to, +1 per reset.
    episode = reset.cumsum(dim=1)
    key_episode = torch.cat([episode.new_zeros(batch_size, window), episode], dim=1)
    key_valid = torch.cat([valid, reset.new_ones(batch_size, length)], dim=1)
    query_time = torch.arange(window, window + length, device=reset.device)
    distance = query_time[:, None] - torch.arange(window + length, device=reset.device)
    in_window = (distance >= 0) & (distance <= window)
    allowed = in_window & key_valid[:, None, :] & (episode[:, :, None] == key_episode[:, None, :])
    kept = (key_valid & (key_episode == episode[:, -1:]))[:, -window:]
    return allowed, distance.clamp(0, window), kept


class TransformerBackbone(Backbone):
    """Windowed, episode-masked causal transformer: Linear -> num_layers pre-norm blocks -> LN."""

    def __init__(
        self, input_dim: int, hidden_dim: int = 128, num_layers: int = 2, num_heads: int = 4, window: int = 32
    ):
        super().__init__(input_dim, output_dim=hidden_dim)
        if num_layers < 1 or window < 1:
            raise ValueError(f"num_layers and window must be at least 1, got {num_layers} and {window}")
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.window = window
        self.input_projection = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(AttentionBlock(hidden_dim, num_heads) for _ in range(num_layers))
        self.output_norm = nn.LayerNorm(hidden_dim)
        distances = torch.arange(window + 1)
        self.distance_bias = nn.Parameter(-alibi_slopes(num_heads)[:, None] * distances)

    def state_spec(self) -> StateSpec:
        dtype = self.input_projection.weight.dtype
        shape = (self.num_layers, self.window, self.hidden_dim)
        return {"keys": (shape, dtype), "values": (shape, dtype), "valid": ((self.window,), torch.bool)}

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        window = self.window
        allowed, distance, valid = episode_window_mask(reset, state["valid"], window)
        bias = self.distance_bias[:, distance]

        hidden = self.input_projection(x)
        new_keys, new_values = [], []
        for layer, block in enumerate(self.blocks):
            query, key, value = block.project(hidden)
            keys = torch.cat([state["keys"][:, layer], key], dim=1)
            values = torch.cat([state["values"][:, layer], value], dim=1)
            hidden = block.attend(hidden, query, keys, values, allowed, bias)
            new_keys.append(keys[:, -window:])
            new_values.append(values[:, -window:])

        # The new window keeps the last W steps that share the final step's episode; other
        # slots are emptied (zeros) so the state after a reset carries nothing from before it.
        empty = ~valid[:, None, :, None]
        state = {
            "keys": torch.stack(new_keys, dim=1).masked_fill(empty, 0.0),
            "values": torch.stack(new_values, dim=1).masked_fill(empty, 0.0),
            "valid": valid,
        }
        return self.output_norm(hidden), state

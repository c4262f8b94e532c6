"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule").

One block on hidden_dim = H channels with num_heads heads of head_dim = H / num_heads:

    q, k, v  = silu(causal depthwise conv1d(W_q u, W_k u, W_v u))     same-episode window, as in `mamba`
    q, k     = q / (|q| sqrt(head_dim)), k / |k|                        per head (L2 norm; q also scaled)
    beta_t   = sigmoid(W_beta u),  alpha_t = exp(-exp(A_log) softplus(W_alpha u + dt_bias))   per head
    S_t      = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T      (S dropped to zero where reset_t)
    o_t      = S_t q_t,   out = out_proj(RMSNorm(o) * silu(W_g u))

Initialisation (the paper's, Mamba-2's gate): A_log = log(U[1, 16]) per head, dt_bias the inverse
softplus of a step drawn log-uniformly from [1e-3, 1e-1], PyTorch's default Linear/Conv1d init.
`forward` is the chunk-wise form: with u_t = beta_t (v_t - alpha_t S_{t-1} k_t) the state is
S_t = alpha_t S_{t-1} + u_t k_t^T, and inside a chunk the u's solve one unit-lower-triangular system
(I + L) U = beta V - beta (decay) S_0 K (the WY / UT transform); a reset is alpha_t = 0, i.e. the
decay masks of `memory.chunked`. `step` is the recurrence above and the reference in the tests.
Stack: x + block(LayerNorm(x)) per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memory.base import State, StateSpec
from memory.chunked import chunk_slices, episode_log_decay, episode_masks, masked_exp
from memory.mamba import same_episode_conv, same_episode_conv_step
from memory.ssm_common import ResidualSSMStack, check_positive, log_uniform


def delta_rule_chunk(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, beta: torch.Tensor, log_decay: torch.Tensor,
    reset: torch.Tensor, state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of the gated delta rule. query, key [B, C, Hh, K], value [B, C, Hh, V], beta and
    log_decay [B, C, Hh], reset [B, C], state [B, Hh, V, K] -> (o [B, C, Hh, V], final state)."""
    reaches, carries = episode_masks(reset)
    cumulative = episode_log_decay(log_decay, reset, reaches).transpose(1, 2)  # [B, Hh, C]
    ratio = masked_exp(cumulative[..., :, None] - cumulative[..., None, :], reaches[:, None])  # [B, Hh, C, C]
    carry = masked_exp(cumulative, carries[:, None])  # [B, Hh, C]
    query_h, key_h, value_h = (t.transpose(1, 2) for t in (query, key, value))
    beta_h = beta.transpose(1, 2)[..., None]  # [B, Hh, C, 1]
    length = reset.shape[1]
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=reset.device).tril(-1)
    interaction = beta_h * ratio * (key_h @ key_h.transpose(-1, -2)) * strictly_lower
    carried_read = carry[..., None] * (key_h @ state.transpose(-1, -2))  # alpha-decayed S_0 k_t  [B, Hh, C, V]
    system = interaction + torch.eye(length, dtype=interaction.dtype, device=reset.device)
    pseudo_values = torch.linalg.solve_triangular(
        system, beta_h * (value_h - carried_read), upper=False, unitriangular=True
    )
    scores = ratio * (query_h @ key_h.transpose(-1, -2))
    output = scores @ pseudo_values + carry[..., None] * (query_h @ state.transpose(-1, -2))
    final = (ratio[..., -1, :, None] * pseudo_values).transpose(-1, -2) @ key_h + carry[..., -1, None, None] * state
    return output.transpose(1, 2), final


class GatedDeltaNetMixer(nn.Module):
    """One Gated DeltaNet block on [.., H]; state 'delta' [heads, head_dim, head_dim], 'conv' [K - 1, 3H]."""

    def __init__(self, hidden_dim: int, num_heads: int, conv_kernel: int, chunk_size: int):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim must be divisible by num_heads, got {hidden_dim} and {num_heads}")
        self.hidden_dim, self.num_heads, self.chunk_size = hidden_dim, num_heads, chunk_size
        self.head_dim = hidden_dim // num_heads
        self.query_key_value = nn.Linear(hidden_dim, 3 * hidden_dim, bias=False)
        self.gates = nn.Linear(hidden_dim, 2 * num_heads)  # beta, alpha logits
        self.output_gate = nn.Linear(hidden_dim, hidden_dim, bias=False)
        bound = 1 / math.sqrt(conv_kernel)
        self.conv_weight = nn.Parameter(torch.empty(3 * hidden_dim, conv_kernel).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.zeros(3 * hidden_dim))
        initial_step = log_uniform((num_heads,), 1e-3, 1e-1)
        self.dt_bias = nn.Parameter(initial_step + torch.log(-torch.expm1(-initial_step)))
        self.A_log = nn.Parameter(torch.log(torch.empty(num_heads).uniform_(1, 16)))
        self.norm = nn.RMSNorm(self.head_dim, eps=1e-5)
        self.out_proj = nn.Linear(hidden_dim, hidden_dim, bias=False)

    def state_spec(self) -> StateSpec:
        dtype = self.A_log.dtype
        return {
            "delta": ((self.num_heads, self.head_dim, self.head_dim), dtype),
            "conv": ((self.conv_weight.shape[1] - 1, self.conv_weight.shape[0]), dtype),
        }

    def _heads(self, mixed: torch.Tensor, u: torch.Tensor):
        """Activated conv output [.., 3H] and block input u -> q, k, v [.., heads, head_dim], beta, log alpha
        [.., heads]."""
        query, key, value = mixed.unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        query = F.normalize(query, dim=-1) / math.sqrt(self.head_dim)
        key = F.normalize(key, dim=-1)
        beta_logit, alpha_logit = self.gates(u).chunk(2, dim=-1)
        log_alpha = -torch.exp(self.A_log) * F.softplus(alpha_logit + self.dt_bias)
        return query, key, value, torch.sigmoid(beta_logit), log_alpha

    def _output(self, o: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(o).flatten(-2) * F.silu(self.output_gate(u)))

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        mixed, conv_state = same_episode_conv(
            self.query_key_value(u), state["conv"], reset, self.conv_weight, self.conv_bias, silu=True
        )
        query, key, value, beta, log_alpha = self._heads(mixed, u)
        memory, outputs = state["delta"], []
        for chunk in chunk_slices(u.shape[1], self.chunk_size):
            o, memory = delta_rule_chunk(query[:, chunk], key[:, chunk], value[:, chunk], beta[:, chunk],
                                         log_alpha[:, chunk], reset[:, chunk], memory)
            outputs.append(o)
        return self._output(torch.cat(outputs, dim=1), u), {"delta": memory, "conv": conv_state}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        mixed, conv_state = same_episode_conv_step(
            self.query_key_value(u), state["conv"], reset, self.conv_weight, self.conv_bias, silu=True
        )
        query, key, value, beta, log_alpha = self._heads(mixed, u)
        carried = torch.where(reset[:, None, None, None], torch.zeros_like(state["delta"]), state["delta"])
        decayed = torch.exp(log_alpha)[..., None, None] * carried
        error = value - (decayed @ key[..., None])[..., 0]
        memory = decayed + beta[..., None, None] * error[..., :, None] * key[..., None, :]
        o = (memory @ query[..., None])[..., 0]
        return self._output(o, u), {"delta": memory, "conv": conv_state}


class GatedDeltaNetBackbone(ResidualSSMStack):
    """Stacked Gated DeltaNet blocks; state {'delta': [B, L, heads, d, d], 'conv': [B, L, conv_kernel - 1, 3H]}.

    Options: num_layers (L), num_heads (d = hidden_dim / num_heads), conv_kernel, chunk_size.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, num_layers: int = 2, num_heads: int = 4,
                 conv_kernel: int = 4, chunk_size: int = 32):
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads,
                       conv_kernel=conv_kernel, chunk_size=chunk_size)
        mixers = [GatedDeltaNetMixer(hidden_dim, num_heads, conv_kernel, chunk_size) for _ in range(num_layers)]
        super().__init__(input_dim, hidden_dim, mixers)

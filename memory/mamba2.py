"""Mamba-2: stacked SSD blocks (Dao & Gu 2024, "Transformers are SSMs") with episode resets.

One block on hidden_dim = H channels, d_inner = expand * H split into heads of head_dim = P:

    z, xBC, dt = in_proj(u)                          [d_inner], [d_inner + 2N], [heads]
    x, B, C    = split(silu(causal depthwise conv1d(xBC)))     same-episode window, as in `mamba`
    dt         = softplus(dt + dt_bias),  a_t = exp(dt_t * A)  A = -exp(A_log): one scalar per head
    h_t        = a_t h_{t-1} + dt_t x_t B_t^T                  h [heads, P, N]; B, C shared by the heads
    y_t        = h_t C_t + D x_t
    out        = out_proj(RMSNorm(y * silu(z)))               gated RMSNorm

Initialisation (the paper's reference code): A_log = log(U[1, 16]) per head, dt_bias the inverse
softplus of a step drawn log-uniformly from [dt_min, dt_max], D = 1, conv as PyTorch's Conv1d.
`forward` is the SSD chunk-wise form (`memory.chunked`, chunks of `chunk_size` steps): inside a
chunk the outputs are matmuls with a [C, C] decay matrix in which a reset cuts every path
across it; across chunks the state is carried exactly. `step` is the recurrence above.
Stack: x + block(LayerNorm(x)) per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memory.base import State, StateSpec
from memory.chunked import chunk_slices, decayed_attention_chunk
from memory.mamba import same_episode_conv, same_episode_conv_step
from memory.ssm_common import ResidualSSMStack, check_positive, check_step_range, log_uniform


class Mamba2Mixer(nn.Module):
    """One Mamba-2 block on [.., H]; state 'ssm' [heads, P, N] and 'conv' [conv_kernel - 1, d_inner + 2N]."""

    def __init__(self, hidden_dim: int, state_size: int, expand: int, head_dim: int, conv_kernel: int,
                 chunk_size: int, dt_min: float, dt_max: float):
        super().__init__()
        inner_dim = expand * hidden_dim
        if inner_dim % head_dim:
            raise ValueError(f"expand * hidden_dim must be divisible by head_dim, got {inner_dim} and {head_dim}")
        self.inner_dim, self.state_size, self.head_dim = inner_dim, state_size, head_dim
        self.num_heads, self.chunk_size = inner_dim // head_dim, chunk_size
        conv_dim = inner_dim + 2 * state_size
        self.in_proj = nn.Linear(hidden_dim, inner_dim + conv_dim + self.num_heads, bias=False)
        bound = 1 / math.sqrt(conv_kernel)
        self.conv_weight = nn.Parameter(torch.empty(conv_dim, conv_kernel).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(conv_dim).uniform_(-bound, bound))
        initial_step = log_uniform((self.num_heads,), dt_min, dt_max)
        self.dt_bias = nn.Parameter(initial_step + torch.log(-torch.expm1(-initial_step)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.num_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = nn.RMSNorm(inner_dim, eps=1e-5)
        self.out_proj = nn.Linear(inner_dim, hidden_dim, bias=False)

    def state_spec(self) -> StateSpec:
        dtype = self.D.dtype
        return {
            "ssm": ((self.num_heads, self.head_dim, self.state_size), dtype),
            "conv": ((self.conv_weight.shape[1] - 1, self.conv_weight.shape[0]), dtype),
        }

    def _split(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.in_proj(u).split([self.inner_dim, self.conv_weight.shape[0], self.num_heads], dim=-1)

    def _ssm_inputs(self, conv_output: torch.Tensor, dt: torch.Tensor):
        """(x [.., heads, P], B [.., N], C [.., N], dt [.., heads], log decay dt * A [.., heads]) from the
        activated conv output."""
        x, B, C = conv_output.split([self.inner_dim, self.state_size, self.state_size], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        return x.unflatten(-1, (self.num_heads, self.head_dim)), B, C, dt, -dt * torch.exp(self.A_log)

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = (y + self.D[:, None] * x).flatten(-2)
        return self.out_proj(self.norm(y * F.silu(z)))

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        z, xBC, dt = self._split(u)
        conv_output, conv_state = same_episode_conv(xBC, state["conv"], reset, self.conv_weight, self.conv_bias,
                                                    silu=True)
        x, B, C, dt, log_decay = self._ssm_inputs(conv_output, dt)
        heads = (-1, -1, self.num_heads, -1)
        key, query, value = B[:, :, None].expand(heads), C[:, :, None].expand(heads), x * dt[..., None]
        ssm, outputs = state["ssm"], []
        for chunk in chunk_slices(u.shape[1], self.chunk_size):
            y, ssm = decayed_attention_chunk(
                query[:, chunk], key[:, chunk], value[:, chunk], log_decay[:, chunk], reset[:, chunk], ssm
            )
            outputs.append(y)
        return self._output(torch.cat(outputs, dim=1), x, z), {"ssm": ssm, "conv": conv_state}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        z, xBC, dt = self._split(u)
        conv_output, conv_state = same_episode_conv_step(xBC, state["conv"], reset, self.conv_weight, self.conv_bias,
                                                           silu=True)
        x, B, C, dt, log_decay = self._ssm_inputs(conv_output, dt)
        carried = torch.where(reset[:, None, None, None], torch.zeros_like(state["ssm"]), state["ssm"])
        ssm = torch.exp(log_decay)[..., None, None] * carried + (x * dt[..., None])[..., None] * B[:, None, None]
        y = (ssm * C[:, None, None]).sum(-1)
        return self._output(y, x, z), {"ssm": ssm, "conv": conv_state}


class Mamba2Backbone(ResidualSSMStack):
    """Stacked Mamba-2 blocks; state {'ssm': [B, L, heads, P, N], 'conv': [B, L, conv_kernel - 1, d_inner + 2N]}.

    Options: state_size (N), num_layers (L), expand, head_dim (P), conv_kernel, chunk_size,
    dt_min / dt_max (initial step range).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        state_size: int = 32,
        num_layers: int = 2,
        expand: int = 2,
        head_dim: int = 32,
        conv_kernel: int = 4,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        check_positive(hidden_dim=hidden_dim, state_size=state_size, num_layers=num_layers, expand=expand,
                       head_dim=head_dim, conv_kernel=conv_kernel, chunk_size=chunk_size)
        check_step_range(dt_min, dt_max)
        mixers = [
            Mamba2Mixer(hidden_dim, state_size, expand, head_dim, conv_kernel, chunk_size, dt_min, dt_max)
            for _ in range(num_layers)
        ]
        super().__init__(input_dim, hidden_dim, mixers)

"""mLSTM: xLSTM's matrix-memory LSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory").

Per head, a matrix memory C [d, d], a normaliser n [d] and a stabiliser m (exponential input gate):

    i~_t, f~_t = gate pre-activations,  log f_t = logsigmoid(f~_t)
    m_t  = max(log f_t + m_{t-1}, i~_t)                              stabiliser (log scale of C, n)
    C_t  = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i~_t - m_t) v_t k_t^T
    n_t  = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(i~_t - m_t) k_t
    h_t  = C_t q_t / max(|n_t . q_t|, exp(-m_t))                     k scaled by 1 / sqrt(d)
(C, n, m dropped to zero where reset_t.) exp(-m_t) in the max makes h_t equal the unstabilised
C q / max(|n q|, 1) of the paper exactly (m is floored at -60 there, where h is ~0 anyway, so
that exp(-m) never overflows).

Block (the paper's pre-up-projection mLSTM block, with dense q/k/v maps in place of its
block-diagonal ones): x, z = up_proj(u) (expand * H each); c = silu(same-episode conv1d(x));
q, k from c, v from x; gates from [q, k, v]; h = mLSTM(..); out = down_proj((HeadNorm(h) + skip * c) * silu(z)).
Initialisation (the paper's reference code): gate weights zero, forget-gate biases linearly
spaced in [3, 6] over the heads, input-gate biases N(0, 0.1^2), skip = 1.
`forward` is chunk-wise parallel (`memory.chunked`): the stabiliser of every step is a masked
max over its episode inside the chunk, then outputs are matmuls of [C, C] gate matrices, with
the normaliser carried as one extra value column. `step` is the recurrence above, the reference.
Stack: x + block(LayerNorm(x)) per layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memory.base import State, StateSpec, matvec
from memory.chunked import chunk_slices, decayed_attention_chunk, episode_log_decay, episode_masks
from memory.mamba import same_episode_conv, same_episode_conv_step
from memory.ssm_common import ResidualSSMStack, check_positive

# exp(-m) is floored at m = -STABILIZER_FLOOR so that it stays finite in float32 (an exp(-m) of inf
# would turn the gradient into NaN); the read there is numerator / e^60, zero for every purpose.
STABILIZER_FLOOR = 60.0


def normalised_read(numerator: torch.Tensor, denominator: torch.Tensor, stabilizer: torch.Tensor) -> torch.Tensor:
    """h = numerator / max(|denominator|, exp(-m)): numerator [.., d], denominator [.., 1], stabilizer m [..]."""
    lower_bound = torch.exp(-stabilizer.clamp(min=-STABILIZER_FLOOR))[..., None]
    return numerator / torch.maximum(denominator.abs(), lower_bound)


def mlstm_chunk(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, input_gate: torch.Tensor,
    log_forget: torch.Tensor, reset: torch.Tensor, state: State,
) -> tuple[torch.Tensor, State]:
    """One chunk: query, key [B, C, Hh, d], value [B, C, Hh, d], input_gate (pre-activation) and
    log_forget [B, C, Hh], reset [B, C], state {'matrix', 'normalizer', 'stabilizer'} -> (h [B, C, Hh, d], state)."""
    reaches, carries = episode_masks(reset)
    cumulative = episode_log_decay(log_forget, reset, reaches)  # [B, C, Hh]
    # m_t - cumulative_t is a running max over the episode: its start (the carried m, or the reset
    # step's own log forget gate applied to m = 0) and i~_j - cumulative_j of the steps j reaching t.
    reset_log_forget = torch.einsum("bij,bjh->bih", (reaches & reset[:, None, :]).to(log_forget.dtype), log_forget)
    start = torch.where(carries[..., None], state["stabilizer"][:, None], reset_log_forget)
    candidates = (input_gate - cumulative)[:, None, :, :].expand(-1, reset.shape[1], -1, -1)
    candidates = candidates.masked_fill(~reaches[..., None], float("-inf"))
    stabilizer = cumulative + torch.maximum(start, candidates.amax(dim=2))  # [B, C, Hh]
    carried = torch.cat([state["matrix"], state["normalizer"][:, :, None]], dim=2)  # [B, Hh, d + 1, d]
    value_and_one = torch.cat([value, torch.ones_like(value[..., :1])], dim=-1)
    output, final = decayed_attention_chunk(
        query, key, value_and_one, log_forget, reset, carried,
        log_input_gain=input_gate, row_log_scale=-stabilizer, state_log_scale=state["stabilizer"],
    )
    numerator, denominator = output[..., :-1], output[..., -1:]
    hidden = normalised_read(numerator, denominator, stabilizer)
    return hidden, {"matrix": final[:, :, :-1], "normalizer": final[:, :, -1], "stabilizer": stabilizer[:, -1]}


class MLSTMMixer(nn.Module):
    """One mLSTM block on [.., H]; state 'matrix' [heads, d, d], 'normalizer' [heads, d],
    'stabilizer' [heads], 'conv' [K - 1, expand * H]."""

    def __init__(self, hidden_dim: int, expand: int, num_heads: int, conv_kernel: int, chunk_size: int):
        super().__init__()
        inner_dim = expand * hidden_dim
        if inner_dim % num_heads:
            raise ValueError(f"expand * hidden_dim must be divisible by num_heads, got {inner_dim} and {num_heads}")
        self.inner_dim, self.num_heads, self.chunk_size = inner_dim, num_heads, chunk_size
        self.head_dim = inner_dim // num_heads
        self.up_proj = nn.Linear(hidden_dim, 2 * inner_dim, bias=False)
        bound = 1 / math.sqrt(conv_kernel)
        self.conv_weight = nn.Parameter(torch.empty(inner_dim, conv_kernel).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(inner_dim).uniform_(-bound, bound))
        self.query_key = nn.Linear(inner_dim, 2 * inner_dim, bias=False)
        self.value = nn.Linear(inner_dim, inner_dim, bias=False)
        self.gates = nn.Linear(3 * inner_dim, 2 * num_heads)  # input, forget pre-activations
        with torch.no_grad():
            self.gates.weight.zero_()
            self.gates.bias[:num_heads].normal_(0.0, 0.1)
            self.gates.bias[num_heads:].copy_(torch.linspace(3.0, 6.0, num_heads))
        self.head_norm = nn.LayerNorm(self.head_dim, bias=False)
        self.skip = nn.Parameter(torch.ones(inner_dim))
        self.down_proj = nn.Linear(inner_dim, hidden_dim, bias=False)

    def state_spec(self) -> StateSpec:
        dtype = self.skip.dtype
        heads, dim = self.num_heads, self.head_dim
        return {
            "matrix": ((heads, dim, dim), dtype),
            "normalizer": ((heads, dim), dtype),
            "stabilizer": ((heads,), dtype),
            "conv": ((self.conv_weight.shape[1] - 1, self.inner_dim), dtype),
        }

    def _heads(self, x: torch.Tensor, conv_output: torch.Tensor):
        """q, k, v [.., heads, d] and the gate pre-activations i~, log f [.., heads]."""
        query, key = self.query_key(conv_output).chunk(2, dim=-1)
        value = self.value(x)
        input_gate, forget_gate = self.gates(torch.cat([query, key, value], dim=-1)).chunk(2, dim=-1)
        split = (self.num_heads, self.head_dim)
        return (query.unflatten(-1, split), key.unflatten(-1, split) / math.sqrt(self.head_dim),
                value.unflatten(-1, split), input_gate, F.logsigmoid(forget_gate))

    def _output(self, hidden: torch.Tensor, conv_output: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        hidden = self.head_norm(hidden).flatten(-2) + self.skip * conv_output
        return self.down_proj(hidden * F.silu(z))

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        x, z = self.up_proj(u).chunk(2, dim=-1)
        conv_output, conv_state = same_episode_conv(x, state["conv"], reset, self.conv_weight, self.conv_bias)
        conv_output = F.silu(conv_output)
        query, key, value, input_gate, log_forget = self._heads(x, conv_output)
        memory = {name: state[name] for name in ("matrix", "normalizer", "stabilizer")}
        outputs = []
        for chunk in chunk_slices(u.shape[1], self.chunk_size):
            hidden, memory = mlstm_chunk(query[:, chunk], key[:, chunk], value[:, chunk], input_gate[:, chunk],
                                         log_forget[:, chunk], reset[:, chunk], memory)
            outputs.append(hidden)
        return self._output(torch.cat(outputs, dim=1), conv_output, z), {**memory, "conv": conv_state}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        x, z = self.up_proj(u).chunk(2, dim=-1)
        conv_output, conv_state = same_episode_conv_step(x, state["conv"], reset, self.conv_weight, self.conv_bias)
        conv_output = F.silu(conv_output)
        query, key, value, input_gate, log_forget = self._heads(x, conv_output)
        kept = ~reset[:, None]
        matrix = state["matrix"] * kept[..., None, None]
        normalizer = state["normalizer"] * kept[..., None]
        previous_stabilizer = state["stabilizer"] * kept
        stabilizer = torch.maximum(log_forget + previous_stabilizer, input_gate)
        forget = torch.exp(log_forget + previous_stabilizer - stabilizer)[..., None]
        write = torch.exp(input_gate - stabilizer)[..., None]
        matrix = forget[..., None] * matrix + (write * value)[..., :, None] * key[..., None, :]
        normalizer = forget * normalizer + write * key
        numerator = matvec(matrix, query)
        denominator = (normalizer * query).sum(-1, keepdim=True)
        hidden = normalised_read(numerator, denominator, stabilizer)
        new_state = {"matrix": matrix, "normalizer": normalizer, "stabilizer": stabilizer, "conv": conv_state}
        return self._output(hidden, conv_output, z), new_state


class MLSTMBackbone(ResidualSSMStack):
    """Stacked mLSTM blocks; state {'matrix': [B, L, heads, d, d], 'normalizer': [B, L, heads, d],
    'stabilizer': [B, L, heads], 'conv': [B, L, conv_kernel - 1, expand * H]}.

    Options: num_layers (L), expand, num_heads (d = expand * hidden_dim / num_heads), conv_kernel, chunk_size.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, num_layers: int = 2, expand: int = 2,
                 num_heads: int = 4, conv_kernel: int = 4, chunk_size: int = 32):
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers, expand=expand, num_heads=num_heads,
                       conv_kernel=conv_kernel, chunk_size=chunk_size)
        mixers = [MLSTMMixer(hidden_dim, expand, num_heads, conv_kernel, chunk_size) for _ in range(num_layers)]
        super().__init__(input_dim, hidden_dim, mixers)

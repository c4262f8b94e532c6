"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?").

A GRU whose gates read only the input, so the recurrence is linear in h and runs as a scan:

    z_t = sigmoid(W_z u_t),   h~_t = g(W_h u_t),   g(v) = v + 1/2 if v >= 0 else sigmoid(v)
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t           (h dropped to zero where reset_t)
    y_t = W_o h_t                                    inner_dim = expand * H -> H

g keeps h~ positive (the paper's log-space-compatible variant). Initialisation: PyTorch's
default Linear init, as in the paper's reference code; the initial state is zero.
Stack: x + minGRU(LayerNorm(x)) per layer (the paper's residual, pre-norm stacking). The
recurrence runs on `kernels.linear_scan` (real): parallel over T, Triton on CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.linear_scan import linear_scan
from memory.base import State, StateSpec
from memory.ssm_common import ResidualSSMStack, check_positive


def positive_activation(value: torch.Tensor) -> torch.Tensor:
    """g(v) = v + 1/2 for v >= 0, sigmoid(v) below: continuous, positive, linear growth."""
    return torch.where(value >= 0, value + 0.5, torch.sigmoid(value))


class MinGRUMixer(nn.Module):
    """One minGRU layer on [.., H]; state 'hidden' [expand * H]."""

    def __init__(self, hidden_dim: int, expand: int):
        super().__init__()
        self.inner_dim = expand * hidden_dim
        self.gates = nn.Linear(hidden_dim, 2 * self.inner_dim, bias=False)
        self.output = nn.Linear(self.inner_dim, hidden_dim, bias=False)

    def state_spec(self) -> StateSpec:
        return {"hidden": ((self.inner_dim,), self.gates.weight.dtype)}

    def _decay_and_drive(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        update_logit, candidate = self.gates(u).chunk(2, dim=-1)
        update = torch.sigmoid(update_logit)
        return 1 - update, update * positive_activation(candidate)

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        decay, drive = self._decay_and_drive(u)
        hidden, final = linear_scan(decay, drive, reset, state["hidden"])
        return self.output(hidden), {"hidden": final}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        decay, drive = self._decay_and_drive(u)
        carried = torch.where(reset[:, None], torch.zeros_like(state["hidden"]), state["hidden"])
        hidden = decay * carried + drive
        return self.output(hidden), {"hidden": hidden}


class MinGRUBackbone(ResidualSSMStack):
    """Stacked minGRU layers; state {'hidden': [B, num_layers, expand * hidden_dim]}.

    Options: num_layers, expand (inner width / hidden_dim).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, num_layers: int = 2, expand: int = 1):
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers, expand=expand)
        super().__init__(input_dim, hidden_dim, [MinGRUMixer(hidden_dim, expand) for _ in range(num_layers)])

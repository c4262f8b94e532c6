"""LRU: linear recurrent unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences").

Each layer maps hidden_dim = H channels through N = state_size complex diagonal states:

    lambda = exp(-exp(nu_log) + i exp(theta_log))          stable exponential parameterisation
    x_t = lambda * x_{t-1} + exp(gamma_log) * (B u_t)       (x dropped to zero where reset_t)
    y_t = Re(C x_t) + D * u_t

Initialisation (the paper's): |lambda| uniform on the ring [r_min, r_max] (uniform in area),
phase uniform in [0, max_phase]; gamma = sqrt(1 - |lambda|^2) (normalisation, so the state's
scale does not grow as |lambda| -> 1); B, C complex Glorot-style (real and imaginary parts
N(0, 1 / (2 H)) and N(0, 1 / N)); D ~ N(0, 1). The defaults r_min = 0.9, r_max = 0.999,
max_phase = pi / 10 are the paper's long-range settings.
Block: x + GLU(GELU(LRU(LayerNorm(x)))), GLU(v) = a * sigmoid(b) with [a, b] = Linear(v).
The recurrence runs on `kernels.linear_scan` (complex): parallel over T, Triton on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear_scan import linear_scan
from memory.base import State, StateSpec
from memory.ssm_common import ResidualSSMStack, check_positive


class LRUMixer(nn.Module):
    """One LRU layer on [.., H] (LRU, GELU, GLU); state 'lru' complex [state_size]."""

    def __init__(self, hidden_dim: int, state_size: int, r_min: float, r_max: float, max_phase: float):
        super().__init__()
        radius_squared = torch.rand(state_size) * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(radius_squared)))
        self.theta_log = nn.Parameter(torch.log(max_phase * torch.rand(state_size)))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - radius_squared)))
        self.B = nn.Parameter(torch.randn(state_size, hidden_dim, 2) / math.sqrt(2 * hidden_dim))
        self.C = nn.Parameter(torch.randn(hidden_dim, state_size, 2) / math.sqrt(state_size))
        self.D = nn.Parameter(torch.randn(hidden_dim))
        self.glu = nn.Linear(hidden_dim, 2 * hidden_dim)

    def state_spec(self) -> StateSpec:
        return {"lru": (tuple(self.nu_log.shape), self.D.dtype.to_complex())}

    def _recurrence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda complex [N], normalised input matrix gamma * B complex [N, H])."""
        eigenvalues = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        return eigenvalues, torch.exp(self.gamma_log)[:, None] * torch.view_as_complex(self.B)

    def _output(self, states: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        y = F.gelu((states @ torch.view_as_complex(self.C).T).real + self.D * u)
        value, gate = self.glu(y).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        eigenvalues, input_matrix = self._recurrence()
        drive = u.to(input_matrix.dtype) @ input_matrix.T
        states, final = linear_scan(eigenvalues.expand_as(drive), drive, reset, state["lru"])
        return self._output(states, u), {"lru": final}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        eigenvalues, input_matrix = self._recurrence()
        carried = torch.where(reset[:, None], torch.zeros_like(state["lru"]), state["lru"])
        states = eigenvalues * carried + u.to(input_matrix.dtype) @ input_matrix.T
        return self._output(states, u), {"lru": states}


class LRUBackbone(ResidualSSMStack):
    """Stacked LRU layers; state {'lru': complex [B, num_layers, state_size]}.

    Options: state_size (N complex states per layer), num_layers, r_min / r_max (initial ring of
    |lambda|), max_phase (initial phases in [0, max_phase]).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        state_size: int = 64,
        num_layers: int = 2,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = math.pi / 10,
    ):
        check_positive(hidden_dim=hidden_dim, state_size=state_size, num_layers=num_layers)
        if not 0 <= r_min < r_max < 1:
            raise ValueError(f"r_min and r_max must satisfy 0 <= r_min < r_max < 1, got {r_min} and {r_max}")
        if not max_phase > 0:
            raise ValueError(f"max_phase must be positive, got {max_phase}")
        mixers = [LRUMixer(hidden_dim, state_size, r_min, r_max, max_phase) for _ in range(num_layers)]
        super().__init__(input_dim, hidden_dim, mixers)

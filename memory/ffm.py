"""FFM: fast and forgetful memory (Morad et al. 2023, "Reinforcement Learning with Fast and Forgetful Memory").

One FFM cell maps the input straight to hidden_dim, as in the paper's POPGym models:

    gate_in, trace_in, skip, gate_out = split(Linear(x))       [m], [m], [H], [H]
    S_t = gamma * S_{t-1} + (trace_in * sigmoid(gate_in)) (x) 1_c      (fast and forgetful aggregator)
    gamma[j, k] = exp(alpha_j + i omega_k)                             alpha < 0: decay, omega: oscillation
    z_t = LayerNorm(Linear([Re S_t, Im S_t]))                          no affine parameters
    y_t = z_t * sigmoid(gate_out) + skip * (1 - sigmoid(gate_out))

The state S is complex [m, c] (memory_size traces x context_size oscillations). The paper
computes the aggregator in closed form with powers of gamma; here it is the same recurrence
run by `kernels.linear_scan` (complex, resettable), so resets are exact and CUDA runs the
Triton kernel. Initialisation (the reference implementation's): alpha_j linearly spaced from
-0.67 (half a trace lost per step) to ln(forgotten_at) / max_period (a trace is down to 1 % at
max_period), omega_k = 2 pi / period_k with periods linearly spaced in [min_period, max_period].
alpha is clamped below zero so the recurrence stays stable while it is learned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear_scan import linear_scan
from memory.base import Backbone, State, StateSpec
from memory.ssm_common import check_positive

FASTEST_DECAY = -0.67


class FFMBackbone(Backbone):
    """One FFM cell; state {'trace': complex [B, memory_size, context_size]}.

    Options: memory_size (m, decay rates), context_size (c, oscillation frequencies),
    min_period / max_period (time scales of the initial decays and oscillations), forgotten_at.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        memory_size: int = 32,
        context_size: int = 4,
        min_period: float = 1.0,
        max_period: float = 1024.0,
        forgotten_at: float = 0.01,
    ):
        super().__init__(input_dim, output_dim=hidden_dim)
        check_positive(hidden_dim=hidden_dim, memory_size=memory_size, context_size=context_size)
        if not 0 < min_period <= max_period:
            raise ValueError(f"min_period and max_period must satisfy 0 < min_period <= max_period, "
                             f"got {min_period} and {max_period}")
        if not 0 < forgotten_at < 1:
            raise ValueError(f"forgotten_at must lie in (0, 1), got {forgotten_at}")
        self.memory_size, self.context_size, self.hidden_dim = memory_size, context_size, hidden_dim
        self.pre = nn.Linear(input_dim, 2 * memory_size + 2 * hidden_dim)
        slowest_decay = min(math.log(forgotten_at) / max_period, -1e-6)
        self.decay = nn.Parameter(torch.linspace(FASTEST_DECAY, slowest_decay, memory_size))
        self.frequency = nn.Parameter(2 * math.pi / torch.linspace(min_period, max_period, context_size))
        self.mix = nn.Linear(2 * memory_size * context_size, hidden_dim)

    def state_spec(self) -> StateSpec:
        return {"trace": ((self.memory_size, self.context_size), self.decay.dtype.to_complex())}

    def gamma(self) -> torch.Tensor:
        """Per-step complex decay [m, c]."""
        decay = self.decay.clamp(max=-1e-6)
        return torch.exp(torch.complex(decay[:, None].expand(-1, self.context_size),
                                       self.frequency[None, :].expand(self.memory_size, -1)))

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        gate_in, trace_in, skip, gate_out = self.pre(x).split(
            [self.memory_size, self.memory_size, self.hidden_dim, self.hidden_dim], dim=-1
        )
        gamma = self.gamma()
        drive = (trace_in * torch.sigmoid(gate_in)).to(gamma.dtype)[..., None].expand(-1, -1, -1, self.context_size)
        traces, final = linear_scan(gamma.expand_as(drive), drive.contiguous(), reset, state["trace"])
        features = torch.view_as_real(traces).transpose(-1, -2).flatten(-3)
        z = F.layer_norm(self.mix(features), (self.hidden_dim,))
        gate = torch.sigmoid(gate_out)
        return z * gate + skip * (1 - gate), {"trace": final}

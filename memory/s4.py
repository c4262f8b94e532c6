"""S4D: stacked diagonal state-space layers run as a resettable recurrence.

Each layer holds, per channel h of the hidden_dim channels, a diagonal complex SSM with
state_size / 2 modes (the other half are their complex conjugates, so the output is real):

    A_n = -exp(log_neg_real_n) + i imag_n           n = 0 .. N/2 - 1, N = state_size, init
          S4D-Lin: A_n = -1/2 + i pi n,  or  S4D-Inv: A_n = -1/2 + i (N / pi) (N / (2n + 1) - 1)
    A_bar = exp(step A),  B_bar = (A_bar - 1) / A   (zero-order hold, B = 1: only C B matters)
    x_t   = A_bar x_{t-1} + B_bar u_t               (x dropped to zero where reset_t)
    y_t   = 2 Re(sum_n C_n x_t,n) + D u_t

with step = exp(log_step) learned per channel (init log-uniform in [dt_min, dt_max]). The
layer runs as a recurrence through `kernels.linear_scan` rather than as a convolution, so a
reset anywhere in a sequence is exact. Block: x + GLU(Linear(GELU(SSM(LayerNorm(x))))).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear_scan import linear_scan
from memory.base import State, StateSpec
from memory.ssm_common import (
    ResidualSSMStack,
    check_positive,
    check_state_size,
    check_step_range,
    log_uniform,
    zoh,
)

INITS = ("lin", "inv")


class S4DMixer(nn.Module):
    """One S4D layer on [.., hidden_dim] (SSM, GELU, Linear + GLU); state 'ssm' [hidden_dim, state_size / 2]."""

    def __init__(self, hidden_dim: int, state_size: int, init: str, dt_min: float, dt_max: float):
        super().__init__()
        modes = torch.arange(state_size // 2, dtype=torch.float32)
        if init == "lin":
            imag = math.pi * modes
        else:
            imag = state_size / math.pi * (state_size / (2 * modes + 1) - 1)
        self.log_neg_real = nn.Parameter(torch.full((hidden_dim, state_size // 2), math.log(0.5)))
        self.imag = nn.Parameter(imag.repeat(hidden_dim, 1))
        self.log_step = nn.Parameter(torch.log(log_uniform((hidden_dim,), dt_min, dt_max)))
        # C stored as (real, imag) pairs so that `.double()` converts it with the other parameters.
        self.C = nn.Parameter(torch.randn(hidden_dim, state_size // 2, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(hidden_dim))
        self.output = nn.Linear(hidden_dim, 2 * hidden_dim)

    def state_spec(self) -> StateSpec:
        return {"ssm": (tuple(self.imag.shape), self.D.dtype.to_complex())}

    def discretise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_bar, B_bar), both complex [hidden_dim, state_size / 2]."""
        A = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        return zoh(A, torch.exp(self.log_step)[:, None])

    def ssm(
        self, u: torch.Tensor, initial_state: torch.Tensor, reset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear SSM alone: u [B, T, H] -> (y = 2 Re(C x) + D u [B, T, H], final x)."""
        A_bar, B_bar = self.discretise()
        drive = B_bar * u[..., None]
        states, final = linear_scan(A_bar.expand_as(drive), drive, reset, initial_state)
        return self._ssm_output(states, u), final

    def _ssm_output(self, states: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return 2 * (states * torch.view_as_complex(self.C)).sum(-1).real + self.D * u

    def _nonlinearity(self, y: torch.Tensor) -> torch.Tensor:
        return F.glu(self.output(F.gelu(y)), dim=-1)

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        y, final = self.ssm(u, state["ssm"], reset)
        return self._nonlinearity(y), {"ssm": final}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        A_bar, B_bar = self.discretise()
        carried = torch.where(reset[:, None, None], torch.zeros_like(state["ssm"]), state["ssm"])
        states = A_bar * carried + B_bar * u[..., None]
        return self._nonlinearity(self._ssm_output(states, u)), {"ssm": states}


class S4Backbone(ResidualSSMStack):
    """Stacked S4D layers; state {'ssm': complex [B, num_layers, hidden_dim, state_size / 2]}.

    Options: state_size (N, even: N / 2 complex modes are stored), num_layers, init
    ("lin" = S4D-Lin, "inv" = S4D-Inv), dt_min / dt_max (range of the initial step size).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        state_size: int = 64,
        num_layers: int = 2,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers)
        check_state_size(state_size)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        check_step_range(dt_min, dt_max)
        mixers = [S4DMixer(hidden_dim, state_size, init, dt_min, dt_max) for _ in range(num_layers)]
        super().__init__(input_dim, hidden_dim, mixers)

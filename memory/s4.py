"""S4D: stacked diagonal state-space layers run as a resettable recurrence.

Each layer holds, per channel h of the hidden_dim channels, a diagonal complex SSM with
state_size / 2 modes (the other half are their complex conjugates, so the output is real):

    A_n = -exp(log_neg_real_n) + i imag_n           n = 0 .. N/2 - 1, N = state_size, init
          S4D-Lin: A_n = -1/2 + i pi n,  or  S4D-Inv: A_n = -1/2 + i (N / pi) (N / (2n + 1) - 1)
    A_bar = exp(step A),  B_bar = (A_bar - 1) / A   (zero-order hold, B = 1: only C B matters)
    x_t   = A_bar x_{t-1} + B_bar u_t               (x dropped to zero where reset_t)
    y_t   = 2 Re(sum_n C_n x_t,n) + D u_t

with step = exp(log_step) learned per channel (init log-uniform in [dt_min, dt_max]).
Block: x + GLU(Linear(GELU(SSM(LayerNorm(x))))).

A sequence runs one of two ways, equal up to rounding (resets are exact in both):
- "scan": the recurrence through `kernels.linear_scan`, which holds every state
  x_t ([B, T, H, N/2] complex) — linear in T;
- "convolution": S4's kernel view, cut at episode starts. With K_k = 2 Re(sum_n C_n A_bar_n^k B_bar_n),
      y_t = sum_{s in t's episode, s <= t} K_{t-s} u_s  +  2 Re(sum_n C_n A_bar_n^(t+1) x0_n) [no reset in 0..t]
  a [B, H, T, T] masked Toeplitz product that never forms the per-mode states; the final
  state is one more contraction over the last episode's inputs.
"auto" (the default) takes the convolution when T <= state_size, where its [T, T] product is
no larger than the scan's states (PPO's and Dreamer's training windows), and the scan otherwise.
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
MODES = ("auto", "scan", "convolution")


class S4DMixer(nn.Module):
    """One S4D layer on [.., hidden_dim] (SSM, GELU, Linear + GLU); state 'ssm' [hidden_dim, state_size / 2]."""

    def __init__(self, hidden_dim: int, state_size: int, init: str, dt_min: float, dt_max: float, mode: str):
        super().__init__()
        self.mode = mode
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
        length = u.shape[1]
        if self.mode == "convolution" or (self.mode == "auto" and length <= 2 * self.imag.shape[1]):
            return self._ssm_convolution(u, initial_state, reset)
        A_bar, B_bar = self.discretise()
        drive = B_bar * u[..., None]
        states, final = linear_scan(A_bar, drive, reset, initial_state)
        return self._ssm_output(states, u), final

    def _ssm_convolution(
        self, u: torch.Tensor, initial_state: torch.Tensor, reset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`ssm` through the episode-masked convolution kernel (see the module docstring)."""
        length = u.shape[1]
        A = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        step_A = torch.exp(self.log_step)[:, None] * A  # [H, M]
        B_bar = (torch.exp(step_A) - 1) / A
        C = torch.view_as_complex(self.C)
        exponents = torch.arange(length + 1, device=u.device, dtype=self.log_step.dtype)
        powers = torch.exp(exponents[:, None, None] * step_A)  # A_bar^k, [T + 1, H, M]
        kernel = 2 * (C * B_bar * powers[:length]).sum(-1).real.T  # K_k, [H, T]
        lags = torch.arange(length, device=u.device)
        lag = lags[:, None] - lags[None, :]  # t - s
        toeplitz = kernel[:, lag.clamp(min=0)] * (lag >= 0)  # [H, T, T]
        episode = torch.cumsum(reset.long(), dim=1)  # [B, T]: episode index within the window
        same_episode = episode[:, :, None] == episode[:, None, :]  # [B, T, T]
        weights = toeplitz[None] * same_episode[:, None]  # [B, H, T, T]
        y = torch.matmul(weights, u.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)  # [B, T, H]
        carries_initial = episode == 0  # no reset in 0..t: x0 still decays into x_t
        from_initial = torch.einsum("thm,bhm->bth", C * powers[1:], initial_state)
        y = y + 2 * from_initial.real * carries_initial[..., None] + self.D * u
        in_last_episode = (episode == episode[:, -1:]).to(u.dtype)  # [B, T]
        decay_to_end = powers[:length].flip(0) * B_bar  # A_bar^(T-1-s) B_bar, [T, H, M]
        final = torch.einsum("bsh,shm->bhm", (u * in_last_episode[..., None]).to(decay_to_end.dtype), decay_to_end)
        final = final + powers[length] * initial_state * carries_initial[:, -1, None, None]
        return y, final

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
    ("lin" = S4D-Lin, "inv" = S4D-Inv), dt_min / dt_max (range of the initial step size),
    mode ("auto", "scan" or "convolution": how a sequence is computed, see the module docstring).
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
        mode: str = "auto",
    ):
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers)
        check_state_size(state_size)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        check_step_range(dt_min, dt_max)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        mixers = [S4DMixer(hidden_dim, state_size, init, dt_min, dt_max, mode) for _ in range(num_layers)]
        super().__init__(input_dim, hidden_dim, mixers)

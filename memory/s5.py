"""S5: stacked MIMO diagonal state-space layers (Smith et al. 2023; the popjaxrl recurrent form).

Each layer maps the hidden_dim = H channels through one shared complex state of
state_size = P eigenvalues. P / 2 are stored; the other half are their conjugates, so
the output is real (conjugate symmetry):

    Lambda_p = -exp(log_neg_real_p) + i imag_p       init: the eigenvalues of HiPPO-N
    Lambda_bar = exp(step Lambda),  B_bar = ((Lambda_bar - 1) / Lambda) B     (zero-order hold)
    x_t = Lambda_bar x_{t-1} + B_bar u_t              (x dropped to zero where reset_t)
    y_t = 2 Re(C x_t) + D u_t

with B complex [P/2, H], C complex [H, P/2], D [H] and step = exp(log_step) learned per
state (init log-uniform in [dt_min, dt_max]). B and C start as a random real B0 [P, H],
C0 [H, P] written in HiPPO-N's eigenbasis V: B = V^H B0, C = C0 V (kept half of V).
Block: x + halfGLU(GELU(SSM(LayerNorm(x)))), halfGLU(v) = v * sigmoid(Linear(v)).
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


def hippo_n_eigenbasis(state_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues [P/2] and eigenvectors [P, P/2] (complex128) of HiPPO-N, the normal part of HiPPO-LegS.

    HiPPO-N = -1/2 I + S with S skew-symmetric, S_nk = -1/2 sqrt((2n+1)(2k+1)) sign(n - k), so
    its eigenvalues are -1/2 + i omega in conjugate pairs; the half with omega > 0 is returned,
    sorted by omega. The conjugate eigenvectors complete the (unitary) basis.
    """
    scale = torch.sqrt(2 * torch.arange(state_size, dtype=torch.float64) + 1)
    index = torch.arange(state_size)
    skew = -0.5 * scale[:, None] * scale[None, :] * torch.sign(index[:, None] - index[None, :]).double()
    # S is real skew-symmetric, so -i S is Hermitian with real eigenvalues omega.
    omega, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    keep = omega > 0
    return torch.complex(torch.full_like(omega[keep], -0.5), omega[keep]), vectors[:, keep]


class S5Mixer(nn.Module):
    """One S5 layer on [.., H] (SSM, GELU, half-GLU); state 'ssm' [state_size / 2]."""

    def __init__(self, hidden_dim: int, state_size: int, dt_min: float, dt_max: float):
        super().__init__()
        eigenvalues, vectors = hippo_n_eigenbasis(state_size)
        real_B = torch.randn(state_size, hidden_dim, dtype=torch.float64) / math.sqrt(hidden_dim)
        real_C = torch.randn(hidden_dim, state_size, dtype=torch.float64) / math.sqrt(state_size)
        B, C = vectors.conj().T @ real_B.cdouble(), real_C.cdouble() @ vectors
        self.log_neg_real = nn.Parameter(torch.log(-eigenvalues.real).float())
        self.imag = nn.Parameter(eigenvalues.imag.float())
        self.log_step = nn.Parameter(torch.log(log_uniform((state_size // 2,), dt_min, dt_max)))
        # B and C stored as (real, imag) pairs so that `.double()` converts them with the other parameters.
        self.B = nn.Parameter(torch.view_as_real(B).float())
        self.C = nn.Parameter(torch.view_as_real(C).float())
        self.D = nn.Parameter(torch.randn(hidden_dim))
        self.gate = nn.Linear(hidden_dim, hidden_dim)

    def state_spec(self) -> StateSpec:
        return {"ssm": (tuple(self.imag.shape), self.D.dtype.to_complex())}

    def discretise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Lambda_bar complex [P/2], B_bar complex [P/2, H])."""
        eigenvalues = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        eigenvalues_bar, input_gain = zoh(eigenvalues, torch.exp(self.log_step))
        return eigenvalues_bar, input_gain[:, None] * torch.view_as_complex(self.B)

    def ssm(
        self, u: torch.Tensor, initial_state: torch.Tensor, reset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear SSM alone: u [B, T, H] -> (y = 2 Re(C x) + D u [B, T, H], final x)."""
        eigenvalues_bar, B_bar = self.discretise()
        drive = u.to(B_bar.dtype) @ B_bar.T
        states, final = linear_scan(eigenvalues_bar, drive, reset, initial_state)
        return self._ssm_output(states, u), final

    def _ssm_output(self, states: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return 2 * (states @ torch.view_as_complex(self.C).T).real + self.D * u

    def _nonlinearity(self, y: torch.Tensor) -> torch.Tensor:
        y = F.gelu(y)
        return y * torch.sigmoid(self.gate(y))

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        y, final = self.ssm(u, state["ssm"], reset)
        return self._nonlinearity(y), {"ssm": final}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        eigenvalues_bar, B_bar = self.discretise()
        carried = torch.where(reset[:, None], torch.zeros_like(state["ssm"]), state["ssm"])
        states = eigenvalues_bar * carried + u.to(B_bar.dtype) @ B_bar.T
        return self._nonlinearity(self._ssm_output(states, u)), {"ssm": states}


class S5Backbone(ResidualSSMStack):
    """Stacked S5 layers; state {'ssm': complex [B, num_layers, state_size / 2]}.

    Options: state_size (P, even: P / 2 complex eigenvalues are stored), num_layers,
    dt_min / dt_max (range of the initial step sizes).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        state_size: int = 64,
        num_layers: int = 2,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        check_positive(hidden_dim=hidden_dim, num_layers=num_layers)
        check_state_size(state_size)
        check_step_range(dt_min, dt_max)
        mixers = [S5Mixer(hidden_dim, state_size, dt_min, dt_max) for _ in range(num_layers)]
        super().__init__(input_dim, hidden_dim, mixers)

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
"auto" (the default) takes the convolution on the CPU at every length (measured there 10-30x faster
than the scan for T from 64 to 800, 16 x 64 channels, 64 modes: the complex scan is the slow one), and on
other devices for T <= state_size (PPO's and Dreamer's training windows), the scan beyond.
"""

from __future__ import annotations

import ctypes
import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.linear_scan import linear_scan
from kernels.native import function, native_step_fits, pointer, use_native
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


def _episode_start(reset: torch.Tensor) -> torch.Tensor:
    """reset bool [B, T] -> int64 [B, T]: the first step of each step's episode inside the window (0 if none)."""
    times = torch.arange(reset.shape[1], device=reset.device)
    return torch.where(reset, times, 0).cummax(dim=1).values


def _same_episode_masks(reset: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """For lags 1, 2, ..: [B, T - lag, 1] masks, 1 where steps t and t - lag lie in one episode (reset bool [B, T]).

    The list stops at the longest lag that any step reaches inside its episode: beyond it every mask is zero.
    """
    times = torch.arange(reset.shape[1], device=reset.device)
    episode_start = _episode_start(reset)
    longest_lag = int((times - episode_start).max())
    return [
        (episode_start[:, lag:] <= times[lag:] - lag).to(dtype)[..., None] for lag in range(1, longest_lag + 1)
    ]


class _EpisodeMaskedConvolution(torch.autograd.Function):
    """y_t = sum_k K_k u_{t-k} over the lags k whose input u_{t-k} lies in t's episode.

    A loop over lags of ops on [B, T, H] (cache-sized on a CPU) instead of a [B, H, T, T] weight tensor;
    the backward is the same loop: grad u_s = sum_k K_k grad y_{s+k}, grad K_k = sum grad y_t u_{t-k}
    (masked alike).
    """

    @staticmethod
    def forward(ctx, u, kernel, reset):
        masks = _same_episode_masks(reset, u.dtype)
        y = u * kernel[0]
        for lag, same in enumerate(masks, start=1):
            y[:, lag:].addcmul_(u[:, :-lag] * same, kernel[lag])
        ctx.save_for_backward(u, kernel, reset)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        u, kernel, reset = ctx.saved_tensors
        grad_u = grad_y * kernel[0]
        grad_kernel = torch.zeros_like(kernel)
        grad_kernel[0] = (grad_y * u).sum((0, 1))
        for lag, same in enumerate(_same_episode_masks(reset, u.dtype), start=1):
            masked = grad_y[:, lag:] * same
            grad_u[:, :-lag].addcmul_(masked, kernel[lag])
            grad_kernel[lag] = (masked * u[:, :-lag]).sum((0, 1))
        return grad_u, grad_kernel, None


class _NativeEpisodeMaskedConvolution(torch.autograd.Function):
    """The same convolution as one C++ loop per step over its episode's lags (kernels/native/s4.cpp):
    one pass where the lag loop above makes two (forward) and four (backward) tensor ops per lag."""

    @staticmethod
    def forward(ctx, u, kernel, reset):
        u, kernel = u.contiguous(), kernel.contiguous()
        episode_start = _episode_start(reset).contiguous()
        y = torch.empty_like(u)
        function("s4", "episode_convolution_forward", u.dtype)(
            *_sizes(u), pointer(u), pointer(kernel), pointer(episode_start), pointer(y))
        ctx.save_for_backward(u, kernel, episode_start)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        u, kernel, episode_start = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_u, grad_kernel = torch.empty_like(u), torch.empty_like(kernel)
        function("s4", "episode_convolution_backward", u.dtype)(
            *_sizes(u), pointer(u), pointer(kernel), pointer(episode_start), pointer(grad_y), pointer(grad_u),
            pointer(grad_kernel))
        return grad_u, grad_kernel, None


def _native_step_fits(u: torch.Tensor, parameter: torch.Tensor) -> bool:
    return native_step_fits("s4", u, parameter)


def _sizes(u: torch.Tensor) -> list[ctypes.c_int64]:
    """(threads, B, T, H): torch's thread count, one thread where the window is too small to share."""
    threads = max(1, min(torch.get_num_threads(), u.numel() // (1 << 16)))
    return [ctypes.c_int64(size) for size in (threads, *u.shape)]


def episode_masked_convolution(
    u: torch.Tensor, kernel: torch.Tensor, reset: torch.Tensor, impl: str = "auto"
) -> torch.Tensor:
    """u [B, T, H], kernel K [T, H], reset bool [B, T] -> y [B, T, H], y_t = sum over lags k with t - k in
    t's episode of K_k * u_{t-k}.

    impl: "auto" ("native" for float32/float64 CPU tensors where the C++ kernel builds, else "torch"),
    "native" (the C++ loop) or "torch" (the lag loop of tensor ops).
    """
    if use_native("s4", impl, u, kernel):
        return _NativeEpisodeMaskedConvolution.apply(u, kernel, reset)
    return _EpisodeMaskedConvolution.apply(u, kernel, reset)


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
        if self.uses_convolution(u.shape[1], u.device):
            return self._ssm_convolution(u, initial_state, reset)
        A_bar, B_bar = self.discretise()
        drive = B_bar * u[..., None]
        states, final = linear_scan(A_bar, drive, reset, initial_state)
        return self._ssm_output(states, u), final

    def uses_convolution(self, length: int, device: torch.device) -> bool:
        """Whether a sequence of `length` steps on `device` runs as the convolution (see the module docstring)."""
        if self.mode != "auto":
            return self.mode == "convolution"
        return device.type == "cpu" or length <= 2 * self.imag.shape[1]

    def _ssm_convolution(
        self, u: torch.Tensor, initial_state: torch.Tensor, reset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`ssm` through the episode-masked convolution kernel (see the module docstring).

        The [T + 1, H, M] powers A_bar^k and everything built from them are kept as real and imaginary
        parts: complex exp and products run several times slower than their real counterparts on a CPU.
        """
        length = u.shape[1]
        A = torch.complex(-torch.exp(self.log_neg_real), self.imag)
        step = torch.exp(self.log_step)[:, None]
        B_bar = (torch.exp(step * A) - 1) / A  # [H, M]
        exponents = torch.arange(length + 1, device=u.device, dtype=self.log_step.dtype)[:, None, None]
        magnitude, angle = torch.exp(exponents * (step * A.real)), exponents * (step * self.imag)
        powers_real, powers_imag = magnitude * torch.cos(angle), magnitude * torch.sin(angle)  # A_bar^k, [T + 1, H, M]
        C_real, C_imag = self.C.unbind(-1)
        weight = torch.view_as_complex(self.C) * B_bar  # C B_bar, [H, M]
        kernel = 2 * (weight.real * powers_real[:length] - weight.imag * powers_imag[:length]).sum(-1)  # K_k, [T, H]
        y = episode_masked_convolution(u, kernel, reset) + self.D * u
        episode = torch.cumsum(reset.long(), dim=1)  # [B, T]: episode index within the window
        carries_initial = episode == 0  # no reset in 0..t: x0 still decays into x_t
        # 2 Re(sum_m P_tm x0_m) with P = C A_bar^(t+1), one real batched matmul over the H channels.
        from_initial_real = C_real * powers_real[1:] - C_imag * powers_imag[1:]  # [T, H, M]
        from_initial_imag = C_real * powers_imag[1:] + C_imag * powers_real[1:]
        from_initial = torch.cat([from_initial_real, -from_initial_imag], dim=-1).permute(1, 2, 0)  # [H, 2M, T]
        initial_parts = torch.cat([initial_state.real, initial_state.imag], dim=-1).transpose(0, 1)  # [H, B, 2M]
        y = y + 2 * (initial_parts @ from_initial).permute(1, 2, 0) * carries_initial[..., None]
        # Final state: sum over the last episode's inputs of A_bar^(T-1-s) B_bar u_s, again one real matmul.
        to_end_real, to_end_imag = powers_real[:length].flip(0), powers_imag[:length].flip(0)
        decay_to_end = torch.cat([to_end_real * B_bar.real - to_end_imag * B_bar.imag,
                                  to_end_real * B_bar.imag + to_end_imag * B_bar.real], dim=-1)  # [T, H, 2M]
        in_last_episode = (episode == episode[:, -1:]).to(u.dtype)  # [B, T]
        last_inputs = (u * in_last_episode[..., None]).permute(2, 0, 1)  # [H, B, T]
        final = torch.complex(*(last_inputs @ decay_to_end.transpose(0, 1)).transpose(0, 1).chunk(2, dim=-1))
        from_carried = torch.complex(powers_real[length], powers_imag[length]) * initial_state
        return y, final + from_carried * carries_initial[:, -1, None, None]

    def _step_native(self, u: torch.Tensor, state: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """`step` with the SSM part (discretisation, state update, read-out) as one C++ loop; no autograd: rollouts
        only."""
        u, state = u.contiguous(), state.contiguous()
        keep = (~reset).to(u.dtype)
        next_state, y = torch.empty_like(state), torch.empty_like(u)
        batch_size, channels = u.shape
        sizes = [ctypes.c_int64(size) for size in (batch_size, channels, self.imag.shape[1])]
        # Every tensor whose address is handed over stays referenced here until the call returns.
        parameters = [x.detach().contiguous() for x in (self.log_neg_real, self.imag, self.log_step, self.C, self.D)]
        function("s4", "s4_step", u.dtype)(
            *sizes, *(pointer(x) for x in (*parameters, u, keep)),
            pointer(torch.view_as_real(state)), pointer(torch.view_as_real(next_state)), pointer(y))
        return self._nonlinearity(y), {"ssm": next_state}

    def _ssm_output(self, states: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return 2 * (states * torch.view_as_complex(self.C)).sum(-1).real + self.D * u

    def _nonlinearity(self, y: torch.Tensor) -> torch.Tensor:
        return F.glu(self.output(F.gelu(y)), dim=-1)

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        y, final = self.ssm(u, state["ssm"], reset)
        return self._nonlinearity(y), {"ssm": final}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        if _native_step_fits(u, self.D):
            return self._step_native(u, state["ssm"], reset)
        A_bar, B_bar = self.discretise()
        # One fresh [B, H, N/2] tensor, updated in place: each fresh complex temporary of that size costs more
        # on a CPU than the arithmetic. A reset multiplies the (finite) carried state by zero.
        states = torch.mul(A_bar, state["ssm"]).mul_((~reset).to(u.dtype)[:, None, None])
        states.add_(B_bar * u[..., None])
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

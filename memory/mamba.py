"""Mamba-1: stacked selective state-space blocks (Gu & Dao 2023) with episode resets.

One block on hidden_dim = H channels, d_inner = expand * H:

    x, z  = in_proj(u)                                       [.., d_inner] each
    x     = silu(causal depthwise conv1d(x))                 kernel `conv_kernel`, same-episode window
    dt, B, C = split(x_proj(x))                              [dt_rank], [N], [N]  (input-dependent)
    delta = softplus(dt_proj(dt))                            [d_inner]
    A     = -exp(A_log)                                      real diagonal [d_inner, N], S4D-Real init
    h_t   = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t h_t + D x_t   (selective scan)
    out   = out_proj(y * silu(z))

The conv window never reaches across an episode start: taps on inputs from before the most
recent reset read zero. The conv state holds the last conv_kernel - 1 inputs, already zeroed
where they precede a reset, and is dropped at a reset like the SSM state.
Stack: x + block(LayerNorm(x)) per layer.
"""

from __future__ import annotations

import ctypes
import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.native import function, native_step_fits, pointer, use_native
from kernels.selective_scan import selective_scan
from memory.base import State, StateSpec, matvec
from memory.ssm_common import ResidualSSMStack, check_positive, check_step_range, log_uniform


def same_episode_conv(
    x: torch.Tensor, conv_state: torch.Tensor, reset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    silu: bool = False, impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv whose taps read zero before the latest reset.

    x [B, T, C], conv_state [B, K-1, C] (inputs at times -(K-1)..-1), weight [C, K], bias [C] ->
    (conv output [B, T, C], SiLU applied if `silu`; last K-1 inputs with pre-reset ones zeroed).
    impl: "auto" ("native" for float32/float64 CPU tensors where the C++ kernel builds, else "torch"),
    "native" (kernels/native/depthwise_conv.cpp: one loop per batch row, the SiLU fused in) or "torch".
    """
    if use_native("depthwise_conv", impl, x, conv_state, weight, bias):
        return _NativeSameEpisodeConv.apply(x, conv_state, reset, weight, bias, silu)
    output, next_state = _same_episode_conv_torch(x, conv_state, reset, weight, bias)
    return (F.silu(output) if silu else output), next_state


def _same_episode_conv_torch(
    x: torch.Tensor, conv_state: torch.Tensor, reset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = weight.shape[1]
    length = x.shape[1]
    padded = torch.cat([conv_state, x], dim=1)  # padded[:, t + k] is the input at time t - (K-1) + k
    times = torch.arange(length, device=x.device)
    # Latest episode start at or before t, or -(K-1) (everything in the window is valid) if none.
    episode_start = torch.where(reset, times, -(kernel - 1)).cummax(dim=1).values
    tap_times = times[:, None] - (kernel - 1) + torch.arange(kernel, device=x.device)
    valid = (tap_times[None] >= episode_start[..., None]).to(x.dtype)  # [B, T, K]
    # One tap at a time on [B, T, C] (a [B, T, C, K] window tensor costs several times more on a CPU).
    output = torch.addcmul(bias, x, weight[:, -1])  # the newest tap is always in the episode
    for tap in range(kernel - 1):
        output = output.addcmul(padded[:, tap:tap + length] * valid[:, :, tap, None], weight[:, tap])
    next_state = padded[:, length:] * valid[:, -1, 1:, None]
    return output, next_state


class _NativeSameEpisodeConv(torch.autograd.Function):
    """`same_episode_conv` as one C++ loop per batch row; the backward recomputes the pre-activation."""

    @staticmethod
    def forward(ctx, x, conv_state, reset, weight, bias, silu):
        batch_size, length, channels = x.shape
        # Rows (b, t) must start at (b T + t) * row_stride, as in a slice of a wider projection; else a copy.
        row_stride = x.stride(1)
        if x.stride(2) != 1 or x.stride(0) != length * row_stride:
            x, row_stride = x.contiguous(), channels
        conv_state, reset, bias = conv_state.contiguous(), reset.contiguous(), bias.contiguous()
        weight_taps = weight.T.contiguous()  # [K, C]
        output, next_state = x.new_empty(batch_size, length, channels), torch.empty_like(conv_state)
        ctx.sizes = _conv_sizes(x, weight_taps, row_stride, silu)
        function("depthwise_conv", "same_episode_conv_forward", x.dtype)(
            *ctx.sizes, *(pointer(t) for t in (x, conv_state, reset, weight_taps, bias, output, next_state)))
        ctx.save_for_backward(x, conv_state, reset, weight_taps, bias)
        return output, next_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, grad_next_state):
        x, conv_state, reset, weight_taps, bias = ctx.saved_tensors
        grad_output = x.new_zeros(x.shape) if grad_output is None else grad_output.contiguous()
        grad_next_state = None if grad_next_state is None else grad_next_state.contiguous()
        grad_x, grad_state = x.new_empty(x.shape), torch.empty_like(conv_state)
        grad_weight_taps, grad_bias = torch.empty_like(weight_taps), torch.empty_like(bias)
        function("depthwise_conv", "same_episode_conv_backward", x.dtype)(
            *ctx.sizes,
            *(pointer(t) for t in (x, conv_state, reset, weight_taps, bias, grad_output, grad_next_state, grad_x,
                                   grad_state, grad_weight_taps, grad_bias)))
        return grad_x, grad_state, None, grad_weight_taps.T, grad_bias, None


def _conv_sizes(x: torch.Tensor, weight_taps: torch.Tensor, row_stride: int, silu: bool) -> list[ctypes.c_int64]:
    """(threads, B, T, C, K, row stride, silu): torch's threads, one where the window is too small to share."""
    threads = max(1, min(torch.get_num_threads(), x.numel() // (1 << 16)))
    return [ctypes.c_int64(size) for size in (threads, *x.shape, weight_taps.shape[0], row_stride, int(silu))]


def same_episode_conv_step(
    x: torch.Tensor, conv_state: torch.Tensor, reset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    silu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of `same_episode_conv`: x [B, C], conv_state [B, K-1, C], reset [B] -> (output [B, C], next state)."""
    conv_state = torch.where(reset[:, None, None], torch.zeros_like(conv_state), conv_state)
    window = torch.cat([conv_state, x[:, None]], dim=1)
    output = (window * weight.T).sum(1) + bias
    return (F.silu(output) if silu else output), window[:, 1:]


def _native_step_fits(u: torch.Tensor, parameter: torch.Tensor) -> bool:
    return native_step_fits("mamba", u, parameter)


class MambaMixer(nn.Module):
    """One Mamba-1 block on [.., H]; state 'ssm' [d_inner, N] and 'conv' [conv_kernel - 1, d_inner]."""

    def __init__(self, hidden_dim: int, state_size: int, expand: int, conv_kernel: int, dt_rank: int,
                 dt_min: float, dt_max: float):
        super().__init__()
        inner_dim = expand * hidden_dim
        self.in_proj = nn.Linear(hidden_dim, 2 * inner_dim, bias=False)
        # Depthwise conv weights as [d_inner, kernel], default Conv1d init (fan_in = kernel).
        bound = 1 / math.sqrt(conv_kernel)
        self.conv_weight = nn.Parameter(torch.empty(inner_dim, conv_kernel).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(inner_dim).uniform_(-bound, bound))
        self.x_proj = nn.Linear(inner_dim, dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner_dim)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
        # Bias = softplus^-1(dt) so that delta starts log-uniform in [dt_min, dt_max].
        initial_step = log_uniform((inner_dim,), dt_min, dt_max)
        with torch.no_grad():
            self.dt_proj.bias.copy_(initial_step + torch.log(-torch.expm1(-initial_step)))
        # S4D-Real: A[d, n] = -(n + 1) for every channel d.
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, state_size + 1)).repeat(inner_dim, 1))
        self.D = nn.Parameter(torch.ones(inner_dim))
        self.out_proj = nn.Linear(inner_dim, hidden_dim, bias=False)
        self.dt_rank, self.state_size = dt_rank, state_size

    def state_spec(self) -> StateSpec:
        inner_dim, kernel = self.conv_weight.shape
        return {
            "ssm": ((inner_dim, self.state_size), self.D.dtype),
            "conv": ((kernel - 1, inner_dim), self.D.dtype),
        }

    def _selective_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """delta [.., d_inner], B [.., N], C [.., N] from the conv output x [.., d_inner]."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        return F.softplus(self.dt_proj(dt)), B, C

    def same_episode_conv(
        self, x: torch.Tensor, conv_state: torch.Tensor, reset: torch.Tensor, silu: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`same_episode_conv` with this block's weights."""
        return same_episode_conv(x, conv_state, reset, self.conv_weight, self.conv_bias, silu=silu)

    def sequence(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, conv_state = self.same_episode_conv(x, state["conv"], reset, silu=True)
        delta, B, C = self._selective_inputs(x)
        y, ssm_state = selective_scan(
            x, delta, -torch.exp(self.A_log), B, C, self.D, z, reset=reset, initial_state=state["ssm"]
        )
        return self.out_proj(y), {"ssm": ssm_state, "conv": conv_state}

    def step(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        if _native_step_fits(u, self.D):
            return self._step_native(u, state, reset)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, conv_state = same_episode_conv_step(x, state["conv"], reset, self.conv_weight, self.conv_bias, silu=True)
        delta, B, C = self._selective_inputs(x)
        # exp(delta A), zero where the episode restarts: the carried state is dropped (exactly; it is finite).
        decay = torch.exp(delta[..., None] * -torch.exp(self.A_log)) * (~reset).to(x.dtype)[:, None, None]
        ssm_state = torch.addcmul(decay * state["ssm"], (delta * x)[..., None], B[:, None])
        y = (matvec(ssm_state, C) + self.D * x) * F.silu(z)
        return self.out_proj(y), {"ssm": ssm_state, "conv": conv_state}

    def _step_native(self, u: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """`step` as one C++ loop per batch row (kernels/native/mamba.cpp); no autograd: rollouts only."""
        batch_size, hidden_dim = u.shape
        inner_dim, kernel = self.conv_weight.shape
        ssm_state, conv_state = state["ssm"].contiguous(), state["conv"].contiguous()
        next_ssm, next_conv = torch.empty_like(ssm_state), torch.empty_like(conv_state)
        output = u.new_empty(batch_size, hidden_dim)
        # Every tensor whose address is handed over stays referenced here until the call returns.
        weights = [layer.weight.contiguous() for layer in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj)]
        tensors = [u.contiguous(), (~reset).to(u.dtype), weights[0], self.conv_weight.contiguous(), self.conv_bias,
                   weights[1], weights[2], self.dt_proj.bias, (-torch.exp(self.A_log)).T.contiguous(), self.D,
                   weights[3], ssm_state, conv_state, next_ssm, next_conv, output]
        threads = max(1, min(torch.get_num_threads(), batch_size // 16))
        sizes = (threads, batch_size, hidden_dim, inner_dim, self.state_size, kernel, self.dt_rank)
        function("mamba", "mamba_block_step", u.dtype)(
            *(ctypes.c_int64(size) for size in sizes), *(pointer(tensor) for tensor in tensors))
        return output, {"ssm": next_ssm, "conv": next_conv}


class MambaBackbone(ResidualSSMStack):
    """Stacked Mamba-1 blocks; state {'ssm': [B, L, d_inner, N], 'conv': [B, L, conv_kernel - 1, d_inner]}.

    Options: state_size (N), num_layers (L), expand (d_inner = expand * hidden_dim),
    conv_kernel, dt_rank (default ceil(hidden_dim / 16)), dt_min / dt_max (initial delta range).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 128,
        state_size: int = 16,
        num_layers: int = 2,
        expand: int = 2,
        conv_kernel: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        dt_rank = math.ceil(hidden_dim / 16) if dt_rank is None else dt_rank
        check_positive(hidden_dim=hidden_dim, state_size=state_size, num_layers=num_layers, expand=expand,
                       conv_kernel=conv_kernel, dt_rank=dt_rank)
        check_step_range(dt_min, dt_max)
        mixers = [
            MambaMixer(hidden_dim, state_size, expand, conv_kernel, dt_rank, dt_min, dt_max)
            for _ in range(num_layers)
        ]
        super().__init__(input_dim, hidden_dim, mixers)

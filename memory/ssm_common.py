"""Pieces shared by the stacked recurrent backbones (s4, s5, mamba, lru, mingru).

`ResidualSSMStack` is the backbone around a list of sequence mixers (one per layer):

    x = Linear(input_dim -> hidden_dim)(x)
    for each layer:  x = x + mixer(LayerNorm(x))        (pre-norm residual)
    return x

No final LayerNorm: at init it makes every output vector sum to the same constant whatever
the input, which hides the memory from a linear read-out of the sum; heads that want
normalised features add their own.

A mixer provides `state_spec()` (its per-layer state), `sequence(x [B, T, H], state, reset [B, T])`
and `step(x [B, H], state, reset [B])`, both returning (y, state). The stack stores layer l's
state entry `name` at `state[name][:, l]`, so every entry is batch-first: [B, num_layers, ...].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memory.base import Backbone, State, StateSpec


def log_uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    """Samples whose log is uniform in [log low, log high] (the S4/S5/Mamba step-size init)."""
    return torch.exp(torch.empty(shape).uniform_(math.log(low), math.log(high)))


def zoh(eigenvalues: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold for dx/dt = diag(lambda) x + B u with step size `step`.

    Returns (lambda_bar, input_gain): lambda_bar = exp(step * lambda) and
    input_gain = (lambda_bar - 1) / lambda, so that B_bar = input_gain * B.
    """
    eigenvalues_bar = torch.exp(step * eigenvalues)
    return eigenvalues_bar, (eigenvalues_bar - 1) / eigenvalues


def check_positive(**options: int) -> None:
    """Raise a ValueError naming the first option that is not a positive integer."""
    for name, value in options.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_state_size(state_size: int) -> None:
    """Conjugate-symmetric SSMs keep half of an even number of eigenvalues."""
    if not isinstance(state_size, int) or state_size < 2 or state_size % 2:
        raise ValueError(f"state_size must be an even integer >= 2 (conjugate pairs), got {state_size!r}")


def check_step_range(dt_min: float, dt_max: float) -> None:
    """The initial step sizes are drawn log-uniformly from [dt_min, dt_max]."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")


class ResidualSSMStack(Backbone):
    """Input projection then pre-norm residual mixer layers; state per layer."""

    def __init__(self, input_dim: int, hidden_dim: int, mixers: list[nn.Module]):
        super().__init__(input_dim, output_dim=hidden_dim)
        self.input_projection = nn.Linear(input_dim, hidden_dim)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in mixers)
        self.mixers = nn.ModuleList(mixers)

    def state_spec(self) -> StateSpec:
        return {
            name: ((len(self.mixers), *shape), dtype)
            for name, (shape, dtype) in self.mixers[0].state_spec().items()
        }

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self._run_layers("sequence", x, state, reset)

    def _step(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self._run_layers("step", x, state, reset)

    def _run_layers(self, method: str, x: torch.Tensor, state: State, reset: torch.Tensor):
        """`_forward` ([B, T, ...]) and `_step` ([B, ...]) share this: all but the mixers acts per time step."""
        x = self.input_projection(x)
        layer_states = []
        for layer, (norm, mixer) in enumerate(zip(self.norms, self.mixers)):
            mixed, layer_state = getattr(mixer, method)(
                norm(x), {name: value[:, layer] for name, value in state.items()}, reset
            )
            x = x + mixed
            layer_states.append(layer_state)
        final_state = {name: torch.stack([s[name] for s in layer_states], dim=1) for name in state}
        return x, final_state

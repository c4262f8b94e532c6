"""The backbone contract every memory module in memrl follows.

    initial_state(batch_size, device=None) -> State
    forward(x: [B, T, D_in], state: State, reset: bool[B, T]) -> (y: [B, T, D_out], State)
    step(x: [B, D_in], state: State, reset: bool[B]) -> (y: [B, D_out], State)

`State` is a dict of batch-first tensors whose shapes do not depend on T. `reset[b, t]`
marks x[b, t] as the first observation of a new episode: the backbone replaces the state
carried into step t by its initial state before reading x[b, t], so nothing from before a
reset influences anything after it, and no gradient crosses it. `forward` over a sequence
equals `step` applied T times.

Subclasses implement `state_spec`, `_forward` and optionally `_step` (default: `_forward`
on a length-1 sequence) and `initial_state` (default: zeros). Inputs are checked here, once,
so every backbone fails with the same clear messages.
"""

from __future__ import annotations

import torch
from torch import nn

State = dict[str, torch.Tensor]
StateSpec = dict[str, tuple[tuple[int, ...], torch.dtype]]


class Backbone(nn.Module):
    """Base class: input checks, zero initial state and reset helpers."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        if input_dim <= 0 or output_dim <= 0:
            raise ValueError(
                f"input_dim and output_dim must be positive, got {input_dim} and {output_dim}"
            )
        self.input_dim = input_dim
        self.output_dim = output_dim

    # -- what subclasses provide -------------------------------------------------------

    def state_spec(self) -> StateSpec:
        """Per state entry: (shape without the batch dimension, dtype)."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _step(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        y, state = self._forward(x[:, None], state, reset[:, None])
        return y[:, 0], state

    # -- the public contract -------------------------------------------------------------

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state for `batch_size` sequences (backbones with learned states override)."""
        device = self._resolve_device(device)
        return {
            name: torch.zeros((batch_size, *shape), dtype=dtype, device=device)
            for name, (shape, dtype) in self.state_spec().items()
        }

    def forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """x [B, T, input_dim], reset bool [B, T] -> (y [B, T, output_dim], final state)."""
        self._check_inputs(x, state, reset, sequence=True)
        return self._forward(x, state, reset)

    def step(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        """x [B, input_dim], reset bool [B] -> (y [B, output_dim], next state)."""
        self._check_inputs(x, state, reset, sequence=False)
        return self._step(x, state, reset)

    # -- helpers for subclasses ----------------------------------------------------------

    def apply_reset(self, state: State, reset: torch.Tensor) -> State:
        """Replace the state of the sequences flagged in `reset` [B] by the initial state."""
        fresh = self.initial_state(reset.shape[0], reset.device)
        return {
            name: torch.where(reset.view(-1, *([1] * (value.dim() - 1))), fresh[name], value)
            for name, value in state.items()
        }

    def _resolve_device(self, device: torch.device | str | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _check_inputs(self, x: torch.Tensor, state: State, reset: torch.Tensor, sequence: bool) -> None:
        name = type(self).__name__
        expected_dims = 3 if sequence else 2
        layout = "[B, T, D]" if sequence else "[B, D]"
        if not isinstance(x, torch.Tensor) or x.dim() != expected_dims or x.shape[-1] != self.input_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: x must be {layout} with D = {self.input_dim}, got {got}")
        if sequence and x.shape[1] == 0:
            raise ValueError(f"{name}: x must hold at least one time step, got T = 0")
        if not x.is_floating_point():
            raise ValueError(f"{name}: x must be a floating-point tensor, got {x.dtype}")
        expected_reset = tuple(x.shape[:-1])
        if not isinstance(reset, torch.Tensor) or reset.dtype != torch.bool or tuple(reset.shape) != expected_reset:
            got = (reset.dtype, tuple(reset.shape)) if isinstance(reset, torch.Tensor) else type(reset).__name__
            raise ValueError(f"{name}: reset must be a bool tensor of shape {expected_reset}, got {got}")
        if reset.device != x.device:
            raise ValueError(f"{name}: reset is on {reset.device} but x is on {x.device}")
        spec = self.state_spec()
        if not isinstance(state, dict) or set(state) != set(spec):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{name}: state must be a dict with keys {sorted(spec)}, got {got}")
        batch_size = x.shape[0]
        for key, (shape, dtype) in spec.items():
            value = state[key]
            expected = (batch_size, *shape)
            if tuple(value.shape) != expected or value.dtype != dtype:
                raise ValueError(
                    f"{name}: state[{key!r}] must be {dtype} of shape {expected}, "
                    f"got {value.dtype} of shape {tuple(value.shape)}"
                )
            if value.device != x.device:
                raise ValueError(f"{name}: state[{key!r}] is on {value.device} but x is on {x.device}")


def matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """matrix [..., M, N] times vector [..., N] -> [..., M].

    Taken as row [..., 1, N] @ matrix^T (the same products, summed over N): on a CPU the batched matmul
    runs that 2-4x faster than matrix @ column [..., N, 1] forward, and faster backward too, for
    mamba's 128 x 16, mlstm's 32 x 32 and shm's 24 x 24 matrices; at 16 x 16 (gated_deltanet) the
    forward times are equal and the backward is slower, so gated_deltanet keeps matrix @ column.
    """
    return (vector[..., None, :] @ matrix.transpose(-1, -2))[..., 0, :]

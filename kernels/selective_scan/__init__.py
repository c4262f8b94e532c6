"""Selective scan (Mamba-1's S6): a resettable, input-dependent diagonal linear recurrence.

    h_t = exp(delta_t A) * (0 if reset_t else h_{t-1}) + delta_t B_t u_t
    y_t = (sum_n C_t h_t + D u_t) * silu(z_t)

"triton" is the fused kernel in `triton.py`: the [B, T, D, N] states stay on chip (stored
only every 16 steps, for the backward pass).
"parallel" discretises every step at once (a = exp(delta A), b = delta B u, both
[B, T, D, N]), runs `kernels.linear_scan.linear_scan` over the flattened D * N channels
(its own "auto" picks the scan kernel for the device) and contracts the states with C.
"native" (`native.py`) is the CPU loop fused in C++ (`kernels/native/selective_scan.cpp`, compiled on
first use): the "auto" choice for CPU tensors where it builds.
"sequential" (`sequential.py`) is a loop over time with a hand-written backward whose every op
touches one step's [B, D, N] (cache-resident on a CPU): the "auto" choice for CPU tensors where the
native kernel does not build, several times faster there than "parallel", which streams whole
[B, T, D, N] tensors through memory.
"naive" is the Python loop in `naive.py`.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from kernels import triton_kernels
from kernels.linear_scan import linear_scan
from kernels.native import unavailable_reason
from kernels.selective_scan import native
from kernels.selective_scan.naive import selective_scan_naive
from kernels.selective_scan.native import selective_scan_native
from kernels.selective_scan.sequential import selective_scan_sequential

IMPLEMENTATIONS = ("auto", "naive", "native", "parallel", "sequential", "triton")


def _triton_module() -> types.ModuleType | None:
    """This op's Triton kernels, or None where triton cannot be imported."""
    return triton_kernels(__name__)


def _selective_scan_parallel(u, delta, A, B, C, D, z, reset, initial_state):
    """Discretise all steps, one `linear_scan` over [B, T, D * N], contract with C."""
    decay = torch.exp(delta[..., None] * A)
    drive = (delta * u)[..., None] * B[:, :, None, :]
    states, final_state = linear_scan(decay.flatten(2), drive.flatten(2), reset, initial_state.flatten(1))
    y = torch.einsum("btdn,btn->btd", states.unflatten(2, initial_state.shape[1:]), C)
    return _skip_and_gate(y, u, D, z), final_state.reshape_as(initial_state)


def _native_applies(u: torch.Tensor) -> bool:
    """Whether "auto" takes the native C++ loop for `u`: a CPU tensor, and the kernel builds here."""
    return u.device.type == "cpu" and native.available()


def _skip_and_gate(y, u, D, z):
    """y + D u, times silu(z) (each where given)."""
    if D is not None:
        y = y + D * u
    if z is not None:
        y = y * F.silu(z)
    return y


def _check_shape(name: str, tensor, layout: str, shape: tuple[int | str, ...], dtype: torch.dtype) -> None:
    """Raise unless `tensor` is a tensor of exactly `shape` and `dtype` ("N" in `shape` matches nothing)."""
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape or tensor.dtype != dtype:
        got = f"{tensor.dtype}{tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be {dtype} {layout} = ({', '.join(map(str, shape))}), got {got}")


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    reset: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resettable selective scan over time, batch-first.

    u, delta (already positive, e.g. softplus'd), z: [B, T, D]; A: [D, N] (real, negative for a
    stable scan); B, C: [B, T, N]; D: [D] or None; reset: bool [B, T] or None (True where a new
    episode starts: the carried state is dropped to zero before step t); initial_state:
    [B, D, N] or None (zeros). Every floating tensor shares u's dtype (float32 or float64).
    Returns (y [B, T, D], final state [B, D, N]).
    impl: "auto" (Triton for float32 CUDA tensors with N <= 128 when triton imports, "native" for
    CPU tensors where it builds, else "sequential" for CPU tensors, else "parallel"), "triton" (fused
    kernel; CUDA, or CPU under TRITON_INTERPRET=1), "native" (fused C++ loop; CPU), "parallel"
    (log-depth torch via `linear_scan`), "sequential" (time loop with a hand-written backward, for the
    CPU), "naive" (Python loop reference).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.dtype not in (torch.float32, torch.float64):
        got = f"{u.dtype}{tuple(u.shape)}" if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a float32 or float64 tensor [B, T, D], got {got}")
    batch_size, length, channels = u.shape
    if length == 0:
        raise ValueError("selective_scan needs at least one time step, got T = 0")
    _check_shape("delta", delta, "[B, T, D]", (batch_size, length, channels), u.dtype)
    state_size = A.shape[1] if isinstance(A, torch.Tensor) and A.dim() == 2 else "N"
    _check_shape("A", A, "[D, N]", (channels, state_size), u.dtype)
    _check_shape("B", B, "[B, T, N]", (batch_size, length, state_size), u.dtype)
    _check_shape("C", C, "[B, T, N]", (batch_size, length, state_size), u.dtype)
    if D is not None:
        _check_shape("D", D, "[D]", (channels,), u.dtype)
    if z is not None:
        _check_shape("z", z, "[B, T, D]", (batch_size, length, channels), u.dtype)
    if reset is None:
        reset = torch.zeros(batch_size, length, dtype=torch.bool, device=u.device)
    _check_shape("reset", reset, "[B, T]", (batch_size, length), torch.bool)
    if initial_state is None:
        initial_state = u.new_zeros(batch_size, channels, state_size)
    _check_shape("initial_state", initial_state, "[B, D, N]", (batch_size, channels, state_size), u.dtype)
    others = {"delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "reset": reset, "initial_state": initial_state}
    for name, tensor in others.items():
        if tensor is not None and tensor.device != u.device:
            raise ValueError(f"{name} is on {tensor.device} but u is on {u.device}")
    if impl == "naive":
        return selective_scan_naive(u, delta, A, B, C, D, z, reset, initial_state)
    if impl == "native":
        if u.device.type != "cpu":
            raise ValueError(f"impl='native' runs on CPU tensors, got u on {u.device}")
        if not native.available():
            raise ValueError(f"impl='native': {unavailable_reason('selective_scan')}")
    if impl == "native" or (impl == "auto" and _native_applies(u)):
        y, final_state = selective_scan_native(u, delta, A, B, C, reset, initial_state)
        return _skip_and_gate(y, u, D, z), final_state
    if impl == "sequential" or (impl == "auto" and u.device.type == "cpu"):
        y, final_state = selective_scan_sequential(u, delta, A, B, C, reset, initial_state)
        return _skip_and_gate(y, u, D, z), final_state
    if impl == "auto":
        triton_module = _triton_module() if u.is_cuda else None
        if (
            triton_module is not None
            and u.dtype in triton_module.SUPPORTED_DTYPES
            and state_size <= triton_module.MAX_STATE_SIZE
        ):
            return triton_module.selective_scan_triton(u, delta, A, B, C, D, z, reset, initial_state)
    if impl == "triton":
        triton_module = _triton_module()
        if triton_module is None:
            raise ValueError("impl='triton' needs the triton package, which cannot be imported here")
        return triton_module.selective_scan_triton(u, delta, A, B, C, D, z, reset, initial_state)
    return _selective_scan_parallel(u, delta, A, B, C, D, z, reset, initial_state)


__all__ = ["selective_scan", "selective_scan_naive", "selective_scan_native", "selective_scan_sequential"]

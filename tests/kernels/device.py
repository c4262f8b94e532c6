"""Where the small-shape kernel tests run their Triton cases: on CUDA tensors when a GPU is present
(compiled kernels), else on CPU tensors under the interpreter (tests/conftest.py sets
TRITON_INTERPRET only without CUDA). The references they are checked against always run in
float64 (complex128) on the CPU."""

from __future__ import annotations

import torch

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_cpu(tensors):
    """The tensors of a tuple/list moved to the CPU (None kept)."""
    return type(tensors)(None if tensor is None else tensor.cpu() for tensor in tensors)

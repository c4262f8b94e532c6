"""Without a CUDA device, Triton kernels run under the CPU interpreter; the variable must be
set before anything imports triton, which is why it lives in the root conftest."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

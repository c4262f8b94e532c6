"""Without a CUDA device, Triton kernels run under the CPU interpreter; the variable must be
set before anything imports triton, which is why it lives in the root conftest.

Every test process runs torch on one CPU thread: the tests run in parallel processes (pytest-xdist,
one per core), and a result must not depend on how many cores the machine has or on which test
happened to run first in the same process."""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
torch.set_num_threads(1)

"""SHM: stable Hadamard memory (Le et al. 2024, "Stable Hadamard Memory: Revitalizing Memory-Augmented
Agents for Reinforcement Learning").

A matrix memory M [d, d] (d = memory_dim) written and calibrated element-wise:

    u = LayerNorm(x)
    v = W_v u,   k = relu(W_k u) / sum,   q = relu(W_q u) / sum,   v_c = W_c u,   eta = sigmoid(w_eta . u)
    C_t = 1 + tanh(theta_t (x) v_c)                 calibration: each entry scaled by a factor in (0, 2)
    U_t = eta (v (x) k)                             update: a gated outer product
    M_t = M_{t-1} * C_t + U_t                       (Hadamard product; dropped to zero where reset_t)
    y_t = Linear(M_t q)                             read-out to hidden_dim

theta_t is a row of a learned table Theta [L, d] (num_thetas = L). The paper samples the row at
random every step so that no calibration is applied at every step; random rows would make
`forward` and `step` disagree, so here the row is the step's index within its episode modulo L
(the table is walked through, one row per step), kept in the state as 'episode_step'. Initialisation
(the paper's): Theta Xavier-uniform, projections Kaiming-uniform without bias, memory zero.

Nothing bounds the memory. Under a repeated input v_c, entry (i, j) is scaled per step by
exp(mean over rows r of log(1 + tanh(Theta[r, i] v_c[j]))) in the long run, walked or sampled alike (the
authors' released code draws `uniform_(0, 1).long()`: always row 0). Measured on the Endless T-Maze
inputs (benchmarks/studies/endless-tmaze-uniform-l10-n10) with `calibration_exponent`, the largest
exponent is +0.013-0.025 at initialisation and +0.24 after 4.5M PPO steps (seed 3): a 660-step episode
scales by e^159, past float32, and PPO stops with TrainingDiverged naming the memory.

The authors' code adds two things the paper's equations do not have; each is an option, off by default:
`memory_bound` b > 0 clamps every entry of M_t to [-b, b] after each step (their pomdp-baselines
`torchkit/shm.py` clamps to 100, which keeps the memory finite whatever the calibration learns), and
`input_shortcut` adds a linear map of u to the read before the output layer (y_t = Linear(M_t q + W_s u + b_s),
in both their pomdp-baselines and POPGym models).

The recurrence is element-wise linear in M, so `forward` runs it on `kernels.linear_scan` over
[d, d] channels (parallel over T; Triton kernel on CUDA). The clamp is not linear: with a bound,
`forward` runs the steps one after another.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.linear_scan import linear_scan
from memory.base import Backbone, State, StateSpec, matvec
from memory.ssm_common import check_positive


def projection(input_dim: int, output_dim: int) -> nn.Linear:
    """Bias-free linear map with the Kaiming-uniform init the paper uses (bound sqrt(6 / fan_in))."""
    layer = nn.Linear(input_dim, output_dim, bias=False)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    return layer


class SHMBackbone(Backbone):
    """One SHM cell; state {'memory': [B, d, d], 'episode_step': int64 [B]} (step index mod num_thetas).

    Options: memory_dim (d), num_thetas (L, rows of the calibration table), memory_bound (b > 0 clamps the
    memory to [-b, b] after each step; 0, the default, leaves it unbounded as in the paper), input_shortcut
    (add a linear map of the normalised input to the read).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, memory_dim: int = 24, num_thetas: int = 128,
                 memory_bound: float = 0.0, input_shortcut: bool = False):
        super().__init__(input_dim, output_dim=hidden_dim)
        check_positive(hidden_dim=hidden_dim, memory_dim=memory_dim, num_thetas=num_thetas)
        if isinstance(memory_bound, bool) or not isinstance(memory_bound, (int, float)) or not memory_bound >= 0 \
                or memory_bound == float("inf"):
            raise ValueError(f"memory_bound must be a finite number >= 0 (0: unbounded), got {memory_bound!r}")
        if not isinstance(input_shortcut, bool):
            raise ValueError(f"input_shortcut must be true or false, got {input_shortcut!r}")
        self.memory_dim, self.num_thetas = memory_dim, num_thetas
        self.memory_bound = float(memory_bound)
        self.input_norm = nn.LayerNorm(input_dim)
        self.value, self.key, self.query = (projection(input_dim, memory_dim) for _ in range(3))
        self.calibration_value = projection(input_dim, memory_dim)
        self.write_gate = projection(input_dim, 1)
        self.thetas = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_thetas, memory_dim)))
        self.shortcut = nn.Linear(input_dim, memory_dim) if input_shortcut else None
        self.output = nn.Linear(memory_dim, hidden_dim)

    def state_spec(self) -> StateSpec:
        dtype = self.thetas.dtype
        return {"memory": ((self.memory_dim, self.memory_dim), dtype), "episode_step": ((), torch.int64)}

    def calibration_exponent(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D_in] -> [B, d, d]: the per-step log-scale the calibration applies to each memory entry when
        x repeats, averaged over the table's rows (exact over whole cycles of num_thetas steps); > 0 grows."""
        calibration_value = self.calibration_value(self.input_norm(x))
        factors = 1 + torch.tanh(self.thetas[None, :, :, None] * calibration_value[:, None, None, :])
        return factors.log().mean(dim=1)

    def _forward(self, x: torch.Tensor, state: State, reset: torch.Tensor) -> tuple[torch.Tensor, State]:
        length = x.shape[1]
        # Index of each step within its episode: steps since the latest reset in the chunk, or
        # the carried count plus the position where there was none.
        position = torch.arange(length, device=x.device).expand_as(reset)
        latest_reset = torch.where(reset, position, torch.full_like(position, -1)).cummax(dim=1).values
        carried_step = state["episode_step"][:, None] + position
        episode_step = torch.where(latest_reset >= 0, position - latest_reset, carried_step)
        theta = self.thetas[episode_step % self.num_thetas]

        u = self.input_norm(x)
        value = self.value(u)
        key = torch.relu(self.key(u))
        key = key / (1e-5 + key.sum(-1, keepdim=True))
        query = torch.relu(self.query(u))
        query = query / (1e-5 + query.sum(-1, keepdim=True))
        calibration = 1 + torch.tanh(theta[..., :, None] * self.calibration_value(u)[..., None, :])
        update = torch.sigmoid(self.write_gate(u))[..., None] * value[..., :, None] * key[..., None, :]
        if self.memory_bound > 0:
            memories, final = self._bounded_scan(calibration, update, reset, state["memory"])
        else:
            memories, final = linear_scan(calibration, update, reset, state["memory"])
        read = matvec(memories, query)
        if self.shortcut is not None:
            read = read + self.shortcut(u)
        next_step = (episode_step[:, -1] + 1) % self.num_thetas
        return self.output(read), {"memory": final, "episode_step": next_step}

    def _bounded_scan(self, calibration: torch.Tensor, update: torch.Tensor, reset: torch.Tensor,
                      memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M_t = clamp(M_{t-1} * C_t + U_t, -b, b), M_{t-1} dropped to zero where reset_t; one step at a time."""
        memories = []
        for t in range(calibration.shape[1]):
            memory = torch.where(reset[:, t, None, None], 0.0, memory)
            memory = (memory * calibration[:, t] + update[:, t]).clamp(-self.memory_bound, self.memory_bound)
            memories.append(memory)
        return torch.stack(memories, dim=1), memory

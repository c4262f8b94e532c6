"""Sequence replay for world-model agents: one ring buffer per env, sampled as [B, T] windows.

    replay = SequenceReplay(capacity=100_000, num_envs=16, fields=specs, device=env.device)
    replay.add({"obs": obs, "is_first": is_first, ...})      # every tensor [num_envs, ...]
    batch = replay.sample(batch_size=16, length=64)           # every tensor [16, 64, ...]

All envs are written together, one row per env step, so the buffers share one write
position. A window is `length` consecutive rows of one env; it may cross episode starts
(the stored `is_first` marks them, and the sequence model resets there), and it never
crosses the seam between the newest and the oldest row. Storage stays on `device` (the
env's), so adding and sampling never leave it.

Sampling: "uniform" over every valid window start, or "recency", where a window whose first
row is `age` rows older than the newest possible start has weight (age + 1) ** -recency_exponent.

Write-back: `sample_with_index` also returns where each window lies, and `overwrite` writes new
values of some fields at those rows (Dreamer refreshes the stored memory state of the rows it
has just replayed, as DreamerV3's replay context does). Rows are only ever overwritten between
two `add`s, so an index from `sample_with_index` stays valid until the next `add`. `gather`
reads fields at such an index, `rows_after` names the row that follows each window.
"""

from __future__ import annotations

import torch

SAMPLING = ("uniform", "recency")

FieldSpec = dict[str, tuple[tuple[int, ...], torch.dtype]]
"""Per stored field: (shape of one env's entry, dtype)."""


class SequenceReplay:
    """Ring buffers [num_envs, capacity // num_envs, ...] per field; see the module docstring."""

    def __init__(self, capacity: int, num_envs: int, fields: FieldSpec, device: torch.device | str = "cpu",
                 sampling: str = "uniform", recency_exponent: float = 1.0):
        if capacity < num_envs:
            raise ValueError(f"replay capacity ({capacity}) must hold at least one step per env ({num_envs} envs)")
        if sampling not in SAMPLING:
            raise ValueError(f"unknown replay sampling {sampling!r}; choose one of: {', '.join(SAMPLING)}")
        if recency_exponent < 0:
            raise ValueError(f"recency_exponent must be 0 or more, got {recency_exponent}")
        self.num_envs = num_envs
        self.rows = capacity // num_envs
        self.device = torch.device(device)
        self.sampling = sampling
        self.recency_exponent = recency_exponent
        self.fields = dict(fields)
        self.storage = {
            name: torch.zeros((num_envs, self.rows, *shape), dtype=dtype, device=self.device)
            for name, (shape, dtype) in self.fields.items()
        }
        self.position = 0
        """The row the next `add` writes."""
        self.size = 0
        """Rows filled per env (at most `rows`)."""

    @property
    def num_steps(self) -> int:
        """Env steps held, all envs together."""
        return self.size * self.num_envs

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.storage.values())

    def add(self, step: dict[str, torch.Tensor]) -> None:
        """Append one env step: every field [num_envs, ...] as declared."""
        if set(step) != set(self.fields):
            raise ValueError(f"replay step must have the fields {sorted(self.fields)}, got {sorted(step)}")
        for name, value in step.items():
            shape, _ = self.fields[name]
            if tuple(value.shape) != (self.num_envs, *shape):
                raise ValueError(
                    f"replay field {name!r} must have shape {(self.num_envs, *shape)}, got {tuple(value.shape)}"
                )
            self.storage[name][:, self.position] = value.to(self.device)
        self.position = (self.position + 1) % self.rows
        self.size = min(self.size + 1, self.rows)

    def can_sample(self, length: int) -> bool:
        return self.size >= length

    def sample(self, batch_size: int, length: int) -> dict[str, torch.Tensor]:
        """`batch_size` windows of `length` consecutive rows -> every field [batch_size, length, ...]."""
        return self.sample_with_index(batch_size, length)[0]

    def sample_with_index(self, batch_size: int, length: int
                          ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """As `sample`, plus the windows' place: (envs int64 [batch_size], rows int64 [batch_size, length])."""
        if not self.can_sample(length):
            raise ValueError(f"replay holds {self.size} steps per env, fewer than the window length {length}")
        num_starts = self.size - length + 1
        if self.sampling == "uniform":
            starts = torch.randint(num_starts, (batch_size,), device=self.device)
        else:
            age = torch.arange(num_starts - 1, -1, -1, device=self.device, dtype=torch.float32)
            weights = (age + 1.0).pow(-self.recency_exponent)
            starts = torch.multinomial(weights, batch_size, replacement=True)
        envs = torch.randint(self.num_envs, (batch_size,), device=self.device)
        oldest = (self.position - self.size) % self.rows
        rows = (oldest + starts[:, None] + torch.arange(length, device=self.device)) % self.rows
        return {name: tensor[envs[:, None], rows] for name, tensor in self.storage.items()}, (envs, rows)

    def gather(self, envs: torch.Tensor, rows: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """Fields `names` at rows [N] of envs [N] -> every field [N, ...]."""
        return {name: self.storage[name][envs.to(self.device), rows.to(self.device)] for name in names}

    def rows_after(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The row after each of rows [N] and whether it holds a step yet (False after the newest row)."""
        newest = (self.position - 1) % self.rows
        return (rows + 1) % self.rows, rows != newest

    def overwrite(self, envs: torch.Tensor, rows: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Write values [B, L, ...] of some fields at rows [B, L] of envs [B] (an index from
        `sample_with_index`, possibly narrowed along L); where two windows name the same row,
        one of them is kept."""
        for name, value in values.items():
            if name not in self.storage:
                raise ValueError(f"replay has no field {name!r}; its fields are {sorted(self.fields)}")
            shape, _ = self.fields[name]
            if tuple(value.shape) != (*rows.shape, *shape):
                raise ValueError(
                    f"replay field {name!r} must be overwritten with shape {(*rows.shape, *shape)}, got {tuple(value.shape)}"
                )
            self.storage[name][envs[:, None].to(self.device), rows.to(self.device)] = value.to(self.device)

    def state_dict(self) -> dict:
        return {"storage": {name: tensor.clone() for name, tensor in self.storage.items()},
                "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        for name, tensor in state["storage"].items():
            if name not in self.storage or self.storage[name].shape != tensor.shape:
                raise ValueError(f"replay field {name!r} in the checkpoint does not match this buffer")
            self.storage[name].copy_(tensor)
        self.position, self.size = state["position"], state["size"]

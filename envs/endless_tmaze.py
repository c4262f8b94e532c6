"""Endless T-Maze: a chain of T-mazes whose cue must be rewritten at every corridor.

The task of "Memory Retention Is Not Enough to Master Memory Tasks in RL" (AAMAS 2026),
batched: memory must not only hold a cue but overwrite it with the next one. The dynamics
equal the authors' code (GitHub Quartz-Admirer/Adaptive-Memory-Envs,
`environments/endless_tmaze.py` with `configs/endless_tmaze.yaml`: penalty -0.01, goal
reward 1); what memrl changes is listed under "Differences" below.
"""

from __future__ import annotations

import torch

from envs.base import BatchedEnv

FORWARD, LEFT, RIGHT = 0, 1, 2
STALL_PENALTY = -0.01
"""The authors' configured penalty (their code's default is 0.0; every config of theirs sets -0.01)."""


class EndlessTMaze(BatchedEnv):
    """n T-maze corridors in a chain; each corridor's cue replaces the previous one.

    Rules (the authors'). Corridor k has length L_k: the agent starts at x = 0 and the
    junction is x = L_k. Whenever x = 0 the agent sees the corridor's cue (left or right,
    uniform); everywhere else the cue reads zero. Actions: 0 forward, 1 turn left, 2 turn right.
    - In the corridor (x < L_k): forward moves x += 1 (reward 0); a turn costs `penalty` and
      does not move (stalling, which also keeps the cue in view at x = 0).
    - At the junction (x == L_k): the turn matching the cue gives +1 and starts corridor
      k + 1 at x = 0 with a fresh cue (and, in uniform mode, a freshly drawn length); after
      the n-th correct turn the episode terminates with success. ANY other action there, the
      wrong turn or forward, costs `penalty` and terminates the episode (failure).
    Lengths: "fixed" gives L_k = L_max; "uniform" draws L_k ~ U{L_min, ..., L_max} for every
    corridor (the first at reset, the next after each correct turn).
    Time limit 6 (L_max + 1) n steps (truncation). Returns lie in [-0.01 T, n].

    Observation, float32 [3]: [x / L_max, cue_left, cue_right] (the one-hot cue is zero when x > 0).

    Differences from the authors' code, none of which changes what a policy can do or earn:
    the observation is normalised (theirs is [x, 0, hint] with raw x and hint in {-1, 0, +1}:
    the same information); the actions are renumbered (theirs: 0 left, 1 right, 2 forward);
    hitting the time limit is a truncation (their single `done` flag does not tell it from a
    termination); and cues are drawn per corridor rather than all at reset (the same
    distribution: independent and uniform).

    Chance: every observation after x = 0 is the same whatever the corridor's cue, so a
    memoryless policy picks its turn independently of the cue and passes each corridor with
    probability 1/2 at best: chance_success = (1/2)^n bounds every memoryless policy. With
    fixed lengths it is reached, by "forward to x = L_max, then turn left". With uniform
    lengths the junction is invisible and forward there fails, so memoryless policies stay
    strictly below it (`memoryless_action` documents the one the tests use).
    """

    obs_dim = 3
    num_actions = 3
    obs_low, obs_high = 0.0, 1.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        num_corridors: int = 3,
        corridor_length: int = 5,
        min_corridor_length: int = 1,
        length_mode: str = "fixed",
        penalty: float = STALL_PENALTY,
    ):
        if not isinstance(num_corridors, int) or num_corridors < 1:
            raise ValueError(f"num_corridors must be an integer >= 1, got {num_corridors!r}")
        if not isinstance(corridor_length, int) or corridor_length < 1:
            raise ValueError(f"corridor_length must be an integer >= 1, got {corridor_length!r}")
        if not isinstance(min_corridor_length, int) or not 1 <= min_corridor_length <= corridor_length:
            raise ValueError(
                f"min_corridor_length must be an integer in [1, corridor_length={corridor_length}], got {min_corridor_length!r}"
            )
        if length_mode not in ("fixed", "uniform"):
            raise ValueError(f"length_mode must be 'fixed' or 'uniform', got {length_mode!r}")
        self.num_corridors = num_corridors
        self.penalty = float(penalty)
        self.max_length = corridor_length
        self.min_length = min_corridor_length
        self.uniform_lengths = length_mode == "uniform"
        self.max_episode_steps = 6 * (corridor_length + 1) * num_corridors
        self.chance_success = 0.5**num_corridors
        super().__init__(num_envs, device, seed)
        self.position = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.length = torch.full((num_envs,), corridor_length, dtype=torch.int64, device=self.device)
        self.cue = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        """0 = left, 1 = right."""
        self.corridors_passed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        # Row 2 x + cue is the observation at position x with that cue: one lookup per step.
        positions = torch.arange(corridor_length + 1, device=self.device).repeat_interleave(2)
        cues = torch.arange(2, device=self.device).repeat(corridor_length + 1)
        cue_visible = (positions == 0).float()
        self.obs_table = torch.stack(
            [positions / corridor_length, cue_visible * (cues == 0), cue_visible * (cues == 1)], dim=1
        )

    def _new_corridor(self, mask: torch.Tensor) -> None:
        """Fresh cue (and length in uniform mode) where `mask`; position back to 0."""
        self.position.masked_fill_(mask, 0)
        cue = torch.randint(2, (self.num_envs,), generator=self.generator, device=self.device)
        self.cue = torch.where(mask, cue, self.cue)
        if self.uniform_lengths:
            length = torch.randint(
                self.min_length, self.max_length + 1, (self.num_envs,), generator=self.generator, device=self.device
            )
            self.length = torch.where(mask, length, self.length)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self.corridors_passed.masked_fill_(mask, 0)
        self._new_corridor(mask)

    def _transition(self, action: torch.Tensor):
        at_junction = self.position == self.length
        correct = at_junction & (action == self.cue + 1)
        failed = at_junction & ~correct
        moved = (action == FORWARD) & ~at_junction
        reward = torch.where(correct, 1.0, torch.where(moved, 0.0, self.penalty))
        self.position += moved
        self.corridors_passed += correct
        success = self.corridors_passed == self.num_corridors
        self._new_corridor(correct & ~success)
        return reward, failed | success, success

    def _observe(self) -> torch.Tensor:
        return self.obs_table.index_select(0, self.position * 2 + self.cue)

    def oracle_action(self) -> torch.Tensor:
        return torch.where(self.position == self.length, self.cue + 1, FORWARD)

    def memory_labels(self) -> dict[str, torch.Tensor]:
        """Ground truth for memory probes (read-only, never part of an observation), per env's current
        episode: "cue" [N] (0 left, 1 right) of the current corridor and "corridor" [N], its index in the
        episode (0 .. n-1); where the index grows, the new corridor's cue superseded the previous one."""
        return {"cue": self.cue.clone(), "corridor": self.corridors_passed.clone()}

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Fixed lengths: forward until x = L_max, then left (reaches chance). Uniform lengths:
        forward at x = 0, left at x = L_max, and elsewhere left or forward with probability 1/2
        each (uses the env's generator). There a corridor of length L < L_max is passed with
        probability 1/4 (the junction step must be a left turn, and left must be the cue) and
        one of length L_max with 1/2: (1 + P(L = L_max)) / 4 per corridor, below chance."""
        scaled_position = obs[:, 0]
        at_last_cell = scaled_position >= 1.0 - 0.5 / self.max_length
        if not self.uniform_lengths:
            return torch.where(at_last_cell, LEFT, FORWARD)
        random_move = torch.where(self.random(obs.shape[0]) < 0.5, FORWARD, LEFT)
        at_start = scaled_position < 0.5 / self.max_length
        return torch.where(at_start, FORWARD, torch.where(at_last_cell, LEFT, random_move))


def _presets() -> dict[str, tuple[type[BatchedEnv], dict]]:
    table: dict[str, tuple[type[BatchedEnv], dict]] = {}
    for mode in ("fixed", "uniform"):
        for length in (5, 10):
            for corridors in (1, 3, 5, 10):
                kwargs = {"num_corridors": corridors, "corridor_length": length, "length_mode": mode}
                table[f"endless-tmaze-{mode}-l{length}-n{corridors}"] = (EndlessTMaze, kwargs)
    table["endless-tmaze"] = table["endless-tmaze-fixed-l5-n3"]
    return table


PRESETS = _presets()
"""The published grid {fixed, uniform} x L_max {5, 10} x n {1, 3, 5, 10} (L_min = 1), and
the bare name = fixed-l5-n3 (also memrl's `memory-rewrite`)."""

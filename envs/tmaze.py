"""Passive T-maze: hold one bit (the cue of the first step) across a long corridor."""

from __future__ import annotations

import torch

from envs.base import BatchedEnv

FORWARD, LEFT, RIGHT = 0, 1, 2
STALL_PENALTY = -0.01


class TMaze(BatchedEnv):
    """A corridor of length L with a cue shown at the first step only and a turn at the end.

    Rules. The agent starts at x = 0; the junction is x = L. The cue (left or right, uniform)
    is visible in the first observation of the episode only. Actions: 0 forward, 1 turn left,
    2 turn right.
    - In the corridor (x < L): forward moves x += 1 (reward 0); a turn costs -0.01 and does not move.
    - At the junction: the turn matching the cue gives +1 and terminates with success; the
      wrong turn costs -0.01 and terminates (failure); forward costs -0.01 and stays.
    Time limit 4 (L + 1) steps (truncation): the oracle needs L + 1, and a uniformly random
    policy usually reaches the junction, which keeps early exploration informative.

    Observation, float32 [4]: [x / L, cue_left, cue_right, at_junction]. The junction flag
    tells a memoryless policy WHEN to turn, never WHICH way.

    Chance: after the first step no observation depends on the cue, so a memoryless policy
    turns correctly with probability 1/2 at best: chance_success = 1/2 (reached by "forward
    until the junction, then left").
    """

    obs_dim = 4
    num_actions = 3
    chance_success = 0.5
    obs_low, obs_high = 0.0, 1.0

    def __init__(
        self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, corridor_length: int = 10
    ):
        if not isinstance(corridor_length, int) or corridor_length < 1:
            raise ValueError(f"corridor_length must be an integer >= 1, got {corridor_length!r}")
        self.corridor_length = corridor_length
        self.max_episode_steps = 4 * (corridor_length + 1)
        super().__init__(num_envs, device, seed)
        self.position = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.cue = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        """0 = left, 1 = right."""
        # Row 3 x + c: the observation at position x, where c is 0 (cue hidden), 1 (left), 2 (right).
        positions = torch.arange(corridor_length + 1, device=self.device).repeat_interleave(3)
        cue_code = torch.arange(3, device=self.device).repeat(corridor_length + 1)
        self.obs_table = torch.stack(
            [positions / corridor_length, cue_code == 1, cue_code == 2, positions == corridor_length], dim=1
        ).float()

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self.position.masked_fill_(mask, 0)
        cue = torch.randint(2, (self.num_envs,), generator=self.generator, device=self.device)
        self.cue = torch.where(mask, cue, self.cue)

    def _transition(self, action: torch.Tensor):
        at_junction = self.position == self.corridor_length
        correct = at_junction & (action == self.cue + 1)
        wrong = at_junction & (action == RIGHT - self.cue)
        moved = (action == FORWARD) & ~at_junction
        reward = torch.where(correct, 1.0, torch.where(moved, 0.0, STALL_PENALTY))
        self.position += moved
        return reward, correct | wrong, correct

    def _observe(self) -> torch.Tensor:
        # The base class counts steps; zero steps taken means this is the episode's first observation.
        cue_code = torch.where(self.elapsed_steps == 0, self.cue + 1, 0)
        return self.obs_table.index_select(0, self.position * 3 + cue_code)

    def oracle_action(self) -> torch.Tensor:
        return torch.where(self.position == self.corridor_length, self.cue + 1, FORWARD)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Forward until the junction flag, then left."""
        return torch.where(obs[:, 3] > 0.5, LEFT, FORWARD)

    def memory_labels(self) -> dict[str, torch.Tensor]:
        """Ground truth for memory probes (read-only, never part of an observation), per env's current
        episode: "cue" [N] (0 left, 1 right) and "corridor" [N], the corridor's index (always 0 here)."""
        return {"cue": self.cue.clone(), "corridor": torch.zeros_like(self.position)}


PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    "tmaze": (TMaze, {"corridor_length": 10}),
    "tmaze-easy": (TMaze, {"corridor_length": 10}),
    "tmaze-medium": (TMaze, {"corridor_length": 100}),
    "tmaze-hard": (TMaze, {"corridor_length": 1000}),
}
"""Corridor lengths 10 / 100 / 1000; the bare name (= easy) is memrl's `memory-retention`."""

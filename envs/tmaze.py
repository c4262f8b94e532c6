"""Passive T-mazes: hold one bit (the cue of the first step) across a long corridor.

`PassiveTMaze` is Ni et al. 2023's task (presets tmaze-passive-l<L>; `memory-retention` is
tmaze-passive-l100). `TMaze` is memrl's own earlier variant (position and a junction flag in
the observation, early termination at the turn; presets tmaze, tmaze-easy/-medium/-hard)."""

from __future__ import annotations

import torch

from envs.base import BatchedEnv

FORWARD, LEFT, RIGHT = 0, 1, 2
STALL_PENALTY = -0.01

PASSIVE_RIGHT, PASSIVE_UP, PASSIVE_LEFT, PASSIVE_DOWN = 0, 1, 2, 3
"""PassiveTMaze's actions, numbered as in Ni et al.'s code."""
PASSIVE_MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))
"""(dx, dy) of each PassiveTMaze action."""


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
"""memrl's variant: corridor lengths 10 / 100 / 1000 (the bare name = easy)."""


class PassiveTMaze(BatchedEnv):
    """The passive T-maze of Ni et al. 2023 ("When do transformers shine in RL? Decoupling memory from
    credit assignment"), equal to their code (GitHub twni2016/Memory-RL, `envs/tmaze.py`,
    `TMazeClassicPassive`, registered by `configs/envs/tmaze_passive.py`).

    Map: a corridor of cells (x, 0), x = 0 .. L, the junction at x = L, and two goal cells
    (L, +1) and (L, -1). The agent starts at (0, 0); the goal is up (+1) or down (-1), uniform.
    Actions: 0 right (x + 1), 1 up (y + 1), 2 left (x - 1), 3 down (y - 1); a move that would
    leave the map does nothing.
    Horizon: every episode lasts exactly L + 1 steps and then terminates (a finite-horizon task;
    their `done` at time_step >= L + 1); there is no earlier end.
    Reward: at the last step, `goal_reward` (1) if the agent stands on the goal cell, else 0;
    at every earlier step t (1-based), `penalty` if x < t, i.e. whenever the agent has not
    moved right at every step so far (penalty = -1/L as in their configs, so lagging all
    the way costs about -1).
    Observation, float32 [2] (their "ambiguous position" encoding, unchanged):
    [0, goal] at the first observation, [0, 0] elsewhere in the corridor (x = 0 included
    after the first step), [1, y] at the junction and the goal cells.

    Chance: after the first observation nothing depends on the goal, so a memoryless policy
    ends on the goal cell with probability 1/2 at best: chance_success = 1/2 (reached by
    "right until the junction flag, then up").
    """

    obs_dim = 2
    num_actions = 4
    chance_success = 0.5
    obs_low, obs_high = -1.0, 1.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        corridor_length: int = 10,
        goal_reward: float = 1.0,
        penalty: float | None = None,
    ):
        if not isinstance(corridor_length, int) or corridor_length < 1:
            raise ValueError(f"corridor_length must be an integer >= 1, got {corridor_length!r}")
        if penalty is not None and penalty > 0:
            raise ValueError(f"penalty must be <= 0 (or None for -1 / corridor_length), got {penalty!r}")
        self.corridor_length = corridor_length
        self.goal_reward = float(goal_reward)
        self.penalty = -1.0 / corridor_length if penalty is None else float(penalty)
        self.max_episode_steps = corridor_length + 1
        super().__init__(num_envs, device, seed)
        self.x = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.y = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.goal_y = torch.ones(num_envs, dtype=torch.int64, device=self.device)
        """+1 (up) or -1 (down)."""
        self.move_x = torch.tensor([move[0] for move in PASSIVE_MOVES], device=self.device)
        self.move_y = torch.tensor([move[1] for move in PASSIVE_MOVES], device=self.device)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self.x.masked_fill_(mask, 0)
        self.y.masked_fill_(mask, 0)
        goal_y = 2 * torch.randint(2, (self.num_envs,), generator=self.generator, device=self.device) - 1
        self.goal_y = torch.where(mask, goal_y, self.goal_y)

    def _transition(self, action: torch.Tensor):
        length = self.corridor_length
        next_x = self.x + self.move_x.index_select(0, action)
        next_y = self.y + self.move_y.index_select(0, action)
        in_corridor = (next_y == 0) & (next_x >= 0) & (next_x <= length)
        on_goal_cell = (next_x == length) & (next_y.abs() == 1)
        valid = in_corridor | on_goal_cell
        self.x = torch.where(valid, next_x, self.x)
        self.y = torch.where(valid, next_y, self.y)
        time_step = self.elapsed_steps + 1
        done = time_step >= self.max_episode_steps
        success = done & (self.y == self.goal_y)
        lagging = torch.where(self.x < time_step, self.penalty, 0.0)
        reward = torch.where(done, success.float() * self.goal_reward, lagging)
        return reward, done, success

    def _observe(self) -> torch.Tensor:
        beyond_corridor = self.x >= self.corridor_length
        shown_goal = torch.where(self.elapsed_steps == 0, self.goal_y, 0)
        return torch.stack([beyond_corridor.float(), torch.where(beyond_corridor, self.y, shown_goal).float()], dim=1)

    def oracle_action(self) -> torch.Tensor:
        turn = torch.where(self.goal_y > 0, PASSIVE_UP, PASSIVE_DOWN)
        return torch.where(self.x < self.corridor_length, PASSIVE_RIGHT, turn)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Right until the junction flag, then up."""
        return torch.where(obs[:, 0] > 0.5, PASSIVE_UP, PASSIVE_RIGHT)

    def memory_labels(self) -> dict[str, torch.Tensor]:
        """Ground truth for memory probes (read-only, never part of an observation): "cue" [N] (0 up,
        1 down) and "corridor" [N], always 0."""
        return {"cue": (self.goal_y < 0).long(), "corridor": torch.zeros_like(self.x)}

PASSIVE_LENGTHS = (10, 30, 50, 100, 300, 500, 1000, 1500)
"""Ni et al.'s corridor lengths (their configs list 1 .. 1000; their paper runs up to 1500)."""

PRESETS.update({f"tmaze-passive-l{length}": (PassiveTMaze, {"corridor_length": length}) for length in PASSIVE_LENGTHS})

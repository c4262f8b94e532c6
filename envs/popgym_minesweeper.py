"""POPGym's MineSweeper (Morad et al., ICLR 2023) as a batched torch env, equal to popgym 1.0.7."""

from __future__ import annotations

from math import factorial

import torch
import torch.nn.functional as F

from envs.base import BatchedEnv


class MineSweeper(BatchedEnv):
    """Minesweeper on a hidden board, told only the count of the square clicked (popgym's MineSweeper).

    Reset hides `num_mines` mines on a board_size x board_size board, uniformly without
    replacement. Every step clicks one square and shows its count: the mines in the 3 x 3
    block centred on it, the square itself included (popgym's count; clicking a mine shows it
    too). Rewards, L being the number of free squares (board_size^2 - num_mines): a free square
    not clicked before earns +1/L, a square clicked before -0.5/(L - 2), a mine -0.5 - 1/L and
    ends the episode. The episode also terminates when every free square has been clicked (a
    win: return 1) and is truncated after L clicks, so a win allows no mistake.
    Observation (min(num_mines + 1, 10)): one-hot of popgym's Discrete observation, the count
    shown (0 at reset). popgym's observation does not repeat the square clicked (it sets
    `obs_requires_prev_action`, and its baselines add the previous action); memrl's agents see
    only the observation, as popgym's env gives it.
    Actions (board_size^2): popgym's MultiDiscrete([board_size, board_size]) action (row, column)
    as the one index row * board_size + column.

    success = a win (every free square clicked, no mine, within the L clicks). The counts never
    say where a mine is (the square clicked is not shown), so a player wins by remembering which
    squares it clicked and avoiding the mines by luck or by inference from the counts;
    `oracle_action` (which reads the board) clicks the first free square not clicked yet and
    always wins. `memoryless_action` clicks a uniformly random square (drawn from the env's
    generator) and wins with probability `chance_success` = L! / (board_size^2)^L exactly
    (every click must be a new free square): 1.2e-6 / 5.4e-15 / 6.8e-27 for Easy / Medium /
    Hard. That is what the uniform clicker reaches, not a proven bound on every memoryless policy.
    """

    obs_low = 0.0
    obs_high = 1.0

    def __init__(
        self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, board_size: int = 4, num_mines: int = 2
    ):
        if isinstance(board_size, bool) or not isinstance(board_size, int) or board_size < 2:
            raise ValueError(f"board_size must be an integer >= 2, got {board_size!r}")
        if isinstance(num_mines, bool) or not isinstance(num_mines, int) or not 1 <= num_mines <= board_size**2 - 3:
            raise ValueError(f"num_mines must be an integer in [1, {board_size**2 - 3}] (at least 3 free squares), got {num_mines!r}")
        self.board_size = board_size
        self.num_mines = num_mines
        self.num_free = board_size**2 - num_mines
        self.obs_dim = min(num_mines + 1, 10)
        self.num_actions = board_size**2
        self.max_episode_steps = self.num_free
        self.chance_success = factorial(self.num_free) / self.num_actions**self.num_free
        super().__init__(num_envs, device, seed)
        self.mines = torch.zeros(num_envs, self.num_actions, dtype=torch.bool, device=self.device)
        """The squares hiding a mine, bool [N, board_size^2] (square row * board_size + column)."""
        self.counts = torch.zeros(num_envs, self.num_actions, dtype=torch.int64, device=self.device)
        """Each square's count (mines in its 3 x 3 block, itself included), int64 [N, board_size^2]."""
        self.clicked = torch.zeros_like(self.mines)
        self.shown = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.observation_values = torch.arange(self.obs_dim, device=self.device)

    def _draw_mines(self, keys: torch.Tensor) -> torch.Tensor:
        """num_mines squares per row of `keys` (float32 [K, board_size^2] uniform in [0, 1)): those of the
        lowest keys, i.e. uniformly without replacement, bool [K, board_size^2]."""
        chosen = keys.argsort(1)[:, : self.num_mines]
        return torch.zeros(keys.shape, dtype=torch.bool, device=self.device).scatter_(1, chosen, True)

    def _count_mines(self, mines: torch.Tensor) -> torch.Tensor:
        grid = mines.float().reshape(-1, 1, self.board_size, self.board_size)
        block = torch.ones(1, 1, 3, 3, device=self.device)
        return F.conv2d(grid, block, padding=1).reshape(-1, self.num_actions).round().long()

    def _start_episodes(self, mask: torch.Tensor) -> None:
        keys = self.random(self.num_envs, self.num_actions)
        rows = self._restart_rows(mask)
        if rows is None:
            self.mines = torch.where(mask[:, None], self._draw_mines(keys), self.mines)
            self.counts = torch.where(mask[:, None], self._count_mines(self.mines), self.counts)
        elif rows.numel() == 0:
            return
        else:
            mines = self._draw_mines(keys[rows])
            self.mines[rows] = mines
            self.counts[rows] = self._count_mines(mines)
        self.clicked.masked_fill_(mask[:, None], False)
        self.shown.masked_fill_(mask, 0)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        square = action.long()[:, None]
        mine = self.mines.gather(1, square).squeeze(1)
        again = self.clicked.gather(1, square).squeeze(1)
        self.clicked.scatter_(1, square, True)
        reward = torch.where(again, -0.5 / (self.num_free - 2), 1.0 / self.num_free)
        reward = torch.where(mine, -0.5 - 1.0 / self.num_free, reward)
        won = (self.clicked | self.mines).all(1) & ~mine
        self.shown = self.counts.gather(1, square).squeeze(1)
        return reward, mine | won, won

    def _observe(self) -> torch.Tensor:
        return (self.shown[:, None] == self.observation_values).float()

    def oracle_action(self) -> torch.Tensor:
        """The first free square not clicked yet (square 0 once all are)."""
        return (~self.mines & ~self.clicked).long().argmax(1)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.randint(0, self.num_actions, (obs.shape[0],))


LEVELS = {"easy": (4, 2), "medium": (6, 6), "hard": (8, 10)}
"""popgym 1.0.7's levels: (board_size, num_mines)."""

PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    f"popgym-mine-sweeper-{level}": (MineSweeper, {"board_size": size, "num_mines": mines}) for level, (size, mines) in LEVELS.items()
}

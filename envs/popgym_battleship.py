"""POPGym's Battleship (Morad et al., ICLR 2023) as a batched torch env, equal to popgym 1.0.7."""

from __future__ import annotations

from math import comb

import torch
import torch.nn.functional as F

from envs.base import BatchedEnv

SHIP_SIZES = (2, 3, 3, 4)
"""popgym 1.0.7's fleet at every level."""


def _uniform_shooter_success(board_size: int, num_ship_cells: int) -> float:
    """P(num_ship_cells given cells are all among board_size**2 uniform shots with replacement), by inclusion-exclusion."""
    cells = board_size**2
    return sum((-1) ** k * comb(num_ship_cells, k) * (1 - k / cells) ** cells for k in range(num_ship_cells + 1))


class Battleship(BatchedEnv):
    """Battleship on a hidden board, told only hit or miss (popgym's Battleship).

    Reset places the ships (SHIP_SIZES) on a board_size x board_size board, one after the
    other, each uniformly among the straight placements inside the board that overlap no ship
    placed before it: popgym's rejection sampling (a uniform start square and one of four
    directions, redrawn until the ship fits) gives every such placement the same chance, two
    (start, direction) draws per placement. Every step shoots one square: a hit (a ship square
    not shot before) earns +1/H (H = 12 ship squares), anything else (water, or a ship square
    shot again) earns -1/(B^2 - H) (B = board_size), so sinking the fleet without a miss
    returns 1 and shooting every square once returns 0. The episode terminates when all H
    ship squares are hit and is truncated after B^2 shots (popgym flags both when the last
    shot sinks the fleet; memrl reports that episode as terminated only).
    Observation (2): one-hot of popgym's Discrete(2) observation, 1 = the last shot was a hit
    (0 at reset). popgym's observation does not repeat the square shot (it sets
    `obs_requires_prev_action`, and its baselines add the previous action); memrl's agents see
    only the observation, as popgym's env gives it.
    Actions (B^2): popgym's MultiDiscrete([B, B]) action (row, column) as the one index
    row * B + column.

    success = the fleet was sunk within the B^2 shots. A player that remembers where it shot
    and never shoots a square twice always succeeds; `oracle_action` (which reads the board)
    hits every shot and returns 1. `memoryless_action` shoots a uniformly random square (drawn
    from the env's generator); it sinks the fleet with probability `chance_success`, computed
    exactly (inclusion-exclusion over the H ship squares: 0.0029 / 0.0033 / 0.0035 for B = 8 /
    10 / 12). That bounds what the uniform shooter reaches, not what every memoryless policy
    could (a policy seeing only hit or miss can still favour likely squares; none better is known).
    """

    obs_dim = 2
    obs_low = 0.0
    obs_high = 1.0

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, board_size: int = 10):
        if isinstance(board_size, bool) or not isinstance(board_size, int) or board_size < max(SHIP_SIZES):
            raise ValueError(f"board_size must be an integer >= {max(SHIP_SIZES)} (the longest ship), got {board_size!r}")
        self.board_size = board_size
        self.num_actions = board_size**2
        self.max_episode_steps = board_size**2
        self.num_ship_cells = sum(SHIP_SIZES)
        self.chance_success = _uniform_shooter_success(board_size, self.num_ship_cells)
        super().__init__(num_envs, device, seed)
        self.placements = {size: self._placements(size) for size in set(SHIP_SIZES)}
        """Ship size -> every straight placement inside the board, bool [P, B^2]."""
        self.ships = torch.zeros(num_envs, self.num_actions, dtype=torch.bool, device=self.device)
        """The squares holding a ship, bool [N, B^2] (square row * B + column)."""
        self.shot = torch.zeros_like(self.ships)
        self.hits = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.last_hit = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.observation_values = torch.arange(2, device=self.device)

    def _placements(self, size: int) -> torch.Tensor:
        size_range = self.board_size - size + 1
        grid = torch.zeros(2, size_range, self.board_size, self.board_size, self.board_size, dtype=torch.bool, device=self.device)
        for offset in range(size):
            for start in range(size_range):
                grid[0, start, :, start + offset, :] |= torch.eye(self.board_size, dtype=torch.bool, device=self.device)
                grid[1, start, :, :, start + offset] |= torch.eye(self.board_size, dtype=torch.bool, device=self.device)
        return grid.reshape(-1, self.num_actions)

    def _draw_board(self, draws: torch.Tensor) -> torch.Tensor:
        """A board per column of `draws` (float32 [len(SHIP_SIZES), K] uniform in [0, 1), one per ship),
        bool [K, B^2]: each ship uniform among the placements that fit, picked by its draw."""
        board = torch.zeros(draws.shape[1], self.num_actions, dtype=torch.bool, device=self.device)
        for size, draw in zip(SHIP_SIZES, draws):
            fits = self._ships_under_placements(board, size) == 0
            num_fits = fits.sum(1)
            # The k-th fitting placement, k uniform in [0, num_fits); the clamp guards float32 rounding up.
            k = torch.minimum((draw * num_fits).long(), num_fits - 1)
            choice = (fits.cumsum(1) <= k[:, None]).sum(1)
            board |= self.placements[size][choice]
        return board

    def _ships_under_placements(self, board: torch.Tensor, size: int) -> torch.Tensor:
        """Ship squares under each placement of `size` (in `placements` order), int64 [N, P], from
        running sums along the columns and rows of `board` [N, B^2]."""
        grid = board.long().reshape(-1, self.board_size, self.board_size)
        down = F.pad(grid.cumsum(1), (0, 0, 1, 0))
        across = F.pad(grid.cumsum(2), (1, 0))
        vertical = down[:, size:, :] - down[:, : self.board_size - size + 1, :]
        horizontal = across[:, :, size:] - across[:, :, : self.board_size - size + 1]
        return torch.cat([vertical.flatten(1), horizontal.transpose(1, 2).flatten(1)], dim=1)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        draws = self.random(len(SHIP_SIZES), self.num_envs)
        rows = self._restart_rows(mask)
        if rows is None:
            self.ships = torch.where(mask[:, None], self._draw_board(draws), self.ships)
        elif rows.numel() == 0:
            return
        else:
            self.ships[rows] = self._draw_board(draws[:, rows])
        self.shot.masked_fill_(mask[:, None], False)
        self.hits.masked_fill_(mask, 0)
        self.last_hit.masked_fill_(mask, 0)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        square = action.long()[:, None]
        hit = (self.ships.gather(1, square) & ~self.shot.gather(1, square)).squeeze(1)
        self.shot.scatter_(1, square, True)
        self.hits += hit.long()
        self.last_hit = hit.long()
        reward = torch.where(hit, 1.0 / self.num_ship_cells, -1.0 / (self.num_actions - self.num_ship_cells))
        terminated = self.hits == self.num_ship_cells
        return reward, terminated, terminated

    def _observe(self) -> torch.Tensor:
        return (self.last_hit[:, None] == self.observation_values).float()

    def oracle_action(self) -> torch.Tensor:
        """The first ship square not hit yet (square 0 once all are)."""
        return (self.ships & ~self.shot).long().argmax(1)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.randint(0, self.num_actions, (obs.shape[0],))


LEVELS = {"easy": 8, "medium": 10, "hard": 12}
"""popgym 1.0.7's levels: board_size (the fleet is SHIP_SIZES at every level)."""

PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    f"popgym-battleship-{level}": (Battleship, {"board_size": size}) for level, size in LEVELS.items()
}

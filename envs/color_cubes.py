"""Color-Cubes: keep a map of coloured cubes that is shown only when something changes.

The task of "Memory Retention Is Not Enough to Master Memory Tasks in RL" (AAMAS 2026,
arXiv 2601.15086). The authors have published no code for it (their public repository,
GitHub Quartz-Admirer/Adaptive-Memory-Envs, holds the Endless T-Maze only), so this follows
the paper's prose (see /work/shared/reference/memory_tasks.md); every number and encoding
below is memrl's choice and is listed in the class docstring.
"""

from __future__ import annotations

import torch

from envs.base import BatchedEnv

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
STEP_X = (0, 0, -1, 1)
STEP_Y = (-1, 1, 0, 0)


class ColorCubes(BatchedEnv):
    """Reach the cube of the target colour on a G x G grid while the cubes move.

    Layout. N cubes of distinct colours 0..N-1 sit on distinct interior cells (both
    coordinates in [1, G - 2]); the border ring is always free. The agent starts on a uniform
    cell, the cubes on uniform interior cells other than the agent's, the target colour is
    uniform. Cells are (x, y) with y growing downwards. Actions: 0 up, 1 down, 2 left,
    3 right (a move into the outer wall does nothing). Stepping onto a cube ends the episode:
    the target cube gives +1 and success, any other cube gives 0 and failure.

    The first W steps are a watch phase in which the agent's actions are ignored (it cannot
    move); the first observation shows the map (every cube's cell and colour) and the target
    colour. Then the agent acts. Teleports: with probability p per step, one cube moves to a
    uniform free interior cell (not a cube's, not the agent's), after the agent's move; the
    next observation shows the map again (an "update"): with its colours, or, when
    `hide_colours_on_update`, only which cells are occupied. No map is shown otherwise.

    teleport_phase "act" (the published dynamics, presets color-cubes-medium/-extreme): the
    teleports happen at every step of the act phase, so the map must be kept current while
    navigating. Any cube may move, the target included, and the target colour is shown in
    the first observation only. Both are memrl's choices, made so that a memoryless policy
    stays at chance: with a target that never moves, the cube that stays put is the target
    (a layout-blind walker then reaches 0.277 instead of 0.25, and an oracle keeping only the
    first map still succeeds 82% of the time), and a target colour shown on every step would
    let a memoryless policy walk towards the target whenever an update is shown.
    teleport_phase "watch" (memrl's earlier variant, presets color-cubes-watch-medium/-extreme):
    teleports move only non-target cubes and happen at watch steps 0 .. W - 2, the target
    colour stays visible, and nothing moves but the agent in the act phase.
    Time limit W + 4 G steps, W + 8 G with act-phase teleports (truncation, reward 0).

    Observation, float32 [2 G + N + 2 + I (N + 1)], I = (G - 2)^2 interior cells:
    agent x one-hot (G), agent y one-hot (G), target colour one-hot (N; zero after the first
    observation under act-phase teleports), acting flag (1 from step W on: actions move the
    agent), map flag (1 when the map is shown), then per interior cell in row-major order
    [occupied, colour one-hot (N)] — all zero when no map is shown, colour entries zero on
    colour-hidden updates.

    `map_every_step` shows the map on every step (with its colours unless hidden on updates): a fully
    observable variant for curricula and controls, not a published level; the target colour is still shown
    as the level says, and the chance level and memoryless policy above do not apply to it.
    `hide_updates` is the opposite ablation: the cubes teleport exactly as without it (same seed, same
    moves), but no map follows; only the first observation shows one. An agent that succeeds as often
    with it as without does not use the updates (evaluate a trained agent on both).

    Levels. Trivial: remember the first map while walking (W = 1, no teleports). Medium: keep
    the latest map (and the target colour) through updates that arrive while walking. Extreme:
    updates hide colours, so which colour moved where must be inferred (exactly one cube moves
    per update: the one that left a remembered cell is the one on the new cell).

    Chance: a memoryless policy sees no map on most acting steps and never sees the target
    colour when it sees a map in the act phase (act-phase teleports) or acts only on no-map
    observations (no act-phase teleports); the layout stays uniform over distinct interior
    cells and the dynamics treat the colours alike, so the first cube it steps on is the target
    with probability 1/N: chance_success = 1/N. With at most 3 non-target cubes, one of the 4
    straight lines from the agent (and from the target) to the border is free of them, so the
    target is always reachable on the current map (the oracle succeeds).
    """

    num_actions = 4
    obs_low, obs_high = 0.0, 1.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        grid_size: int = 5,
        num_cubes: int = 3,
        watch_steps: int = 1,
        teleport_prob: float = 0.0,
        hide_colours_on_update: bool = False,
        teleport_phase: str = "act",
        map_every_step: bool = False,
        hide_updates: bool = False,
    ):
        if not isinstance(num_cubes, int) or not 2 <= num_cubes <= 4:
            raise ValueError(f"num_cubes must be an integer in [2, 4] (so the target is always reachable), got {num_cubes!r}")
        needed_cells = num_cubes + 1 + (teleport_prob > 0)
        if not isinstance(grid_size, int) or grid_size < 3 or (grid_size - 2) ** 2 < needed_cells:
            raise ValueError(
                f"grid_size must be an integer whose (grid_size - 2)^2 interior cells hold {num_cubes} cubes, the agent"
                f"{' and a free cell to teleport to' if teleport_prob > 0 else ''}, got {grid_size!r}"
            )
        if not isinstance(watch_steps, int) or watch_steps < 1:
            raise ValueError(f"watch_steps must be an integer >= 1, got {watch_steps!r}")
        if not 0.0 <= teleport_prob <= 1.0:
            raise ValueError(f"teleport_prob must be in [0, 1], got {teleport_prob!r}")
        if teleport_phase not in ("act", "watch"):
            raise ValueError(f"teleport_phase must be 'act' or 'watch', got {teleport_phase!r}")
        if not isinstance(map_every_step, bool):
            raise ValueError(f"map_every_step must be true or false, got {map_every_step!r}")
        if not isinstance(hide_updates, bool) or (hide_updates and map_every_step):
            raise ValueError(f"hide_updates must be true or false, and false with map_every_step, got {hide_updates!r}")
        self.grid_size = grid_size
        self.num_cubes = num_cubes
        self.watch_steps = watch_steps
        self.teleport_prob = teleport_prob
        self.teleport_while_acting = teleport_phase == "act"
        self.teleports = teleport_prob > 0 and (self.teleport_while_acting or watch_steps >= 2)
        self.target_shown_once = self.teleport_while_acting and self.teleports
        self.hide_colours_on_update = hide_colours_on_update
        self.map_every_step = map_every_step
        self.hide_updates = hide_updates
        self.num_interior = (grid_size - 2) ** 2
        self.obs_dim = 2 * grid_size + num_cubes + 2 + self.num_interior * (num_cubes + 1)
        self.max_episode_steps = watch_steps + (8 if self.target_shown_once else 4) * grid_size
        self.chance_success = 1.0 / num_cubes
        super().__init__(num_envs, device, seed)
        index = dict(dtype=torch.int64, device=self.device)
        self.agent_x = torch.zeros(num_envs, **index)
        self.agent_y = torch.zeros(num_envs, **index)
        self.cube_cell = torch.zeros(num_envs, num_cubes, **index)
        """Flat cell y * G + x of the cube of each colour, [N, num_cubes]."""
        self.target = torch.zeros(num_envs, **index)
        self.map_shown = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self.colours_shown = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        inner = torch.arange(1, grid_size - 1, **index)
        self.interior_cells = (inner[:, None] * grid_size + inner[None, :]).flatten()
        self.slot_of_cell = torch.zeros(grid_size * grid_size, **index)
        self.slot_of_cell[self.interior_cells] = torch.arange(self.num_interior, **index)
        self.step_x = torch.tensor(STEP_X, **index)
        self.step_y = torch.tensor(STEP_Y, **index)
        cell_x = torch.arange(grid_size * grid_size, **index) % grid_size
        cell_y = torch.arange(grid_size * grid_size, **index) // grid_size
        next_x = (cell_x[:, None] + self.step_x).clamp(0, grid_size - 1)
        next_y = (cell_y[:, None] + self.step_y).clamp(0, grid_size - 1)
        self.neighbour_cells = next_y * grid_size + next_x
        """The cell each action leads to from each cell (itself at a wall), [G * G, 4]."""

    # -- dynamics ------------------------------------------------------------------------

    def _agent_cell(self) -> torch.Tensor:
        return self.agent_y * self.grid_size + self.agent_x

    def _start_episodes(self, mask: torch.Tensor) -> None:
        size, shape = self.grid_size, (self.num_envs,)
        agent_cell = torch.randint(size * size, shape, generator=self.generator, device=self.device)
        # Uniform distinct interior cells in uniform order, the agent's cell ranked last.
        keys = self.random(self.num_envs, self.num_interior) + 2.0 * (self.interior_cells == agent_cell[:, None])
        slots = keys.topk(self.num_cubes, dim=1, largest=False).indices
        target = torch.randint(self.num_cubes, shape, generator=self.generator, device=self.device)
        self.agent_x = torch.where(mask, agent_cell % size, self.agent_x)
        self.agent_y = torch.where(mask, agent_cell // size, self.agent_y)
        self.cube_cell = torch.where(mask[:, None], self.interior_cells.take(slots), self.cube_cell)
        self.target = torch.where(mask, target, self.target)
        self.map_shown |= mask
        self.colours_shown |= mask

    def _teleport(self) -> torch.Tensor:
        """Move one random non-target cube where the draw says so (in the act phase, or at watch
        steps 0 .. W-2 with teleport_phase "watch") -> moved [N]."""
        shape = (self.num_envs,)
        if self.teleport_while_acting:
            in_window = self.elapsed_steps >= self.watch_steps
        else:
            in_window = self.elapsed_steps <= self.watch_steps - 2
        moved = in_window & (self.random(self.num_envs) < self.teleport_prob)
        if self.teleport_while_acting:
            cube = torch.randint(self.num_cubes, shape, generator=self.generator, device=self.device).unsqueeze(1)
        else:
            pick = torch.randint(self.num_cubes - 1, shape, generator=self.generator, device=self.device)
            cube = (pick + (pick >= self.target)).unsqueeze(1)
        taken = (self.cube_cell.unsqueeze(2) == self.interior_cells).any(1)
        taken |= self.interior_cells == self._agent_cell().unsqueeze(1)
        destination = self.interior_cells.take((self.random(self.num_envs, self.num_interior) + 2.0 * taken).argmin(1))
        new_cell = torch.where(moved, destination, self.cube_cell.gather(1, cube).squeeze(1))
        self.cube_cell.scatter_(1, cube, new_cell.unsqueeze(1))
        return moved

    def _transition(self, action: torch.Tensor):
        acting = self.elapsed_steps >= self.watch_steps
        last = self.grid_size - 1
        self.agent_x = (self.agent_x + self.step_x.index_select(0, action) * acting).clamp_(0, last)
        self.agent_y = (self.agent_y + self.step_y.index_select(0, action) * acting).clamp_(0, last)
        touched = self.cube_cell == self._agent_cell().unsqueeze(1)
        success = touched.gather(1, self.target.unsqueeze(1)).squeeze(1)
        # The move is judged on the map the agent saw; cubes teleport after it, never onto the agent.
        if self.teleports:
            self.map_shown = (self._teleport() & (not self.hide_updates)) | self.map_every_step
            self.colours_shown.fill_(not self.hide_colours_on_update)
        else:
            self.map_shown.fill_(self.map_every_step)
        return success.float(), touched.any(1), success

    def _observe(self) -> torch.Tensor:
        size, cubes = self.grid_size, self.num_cubes
        flags = 2 * size + cubes
        columns = torch.arange(flags, flags + 2, device=self.device).expand(self.num_envs, 2)
        slot_start = flags + 2 + self.slot_of_cell.take(self.cube_cell) * (cubes + 1)
        colour_offset = torch.arange(1, cubes + 1, device=self.device)
        index = torch.cat(
            [
                self.agent_x.unsqueeze(1),
                (size + self.agent_y).unsqueeze(1),
                (2 * size + self.target).unsqueeze(1),
                columns,
                slot_start,
                slot_start + colour_offset,
            ],
            dim=1,
        )
        shown = self.map_shown.unsqueeze(1)
        acting = (self.elapsed_steps >= self.watch_steps).unsqueeze(1)
        target_shown = torch.ones(self.num_envs, 1, dtype=torch.bool, device=self.device)
        if self.target_shown_once:
            target_shown = (self.elapsed_steps == 0).unsqueeze(1)
        value = torch.cat(
            [
                torch.ones(self.num_envs, 2, dtype=torch.bool, device=self.device),
                target_shown,
                acting,
                shown,
                shown.expand(-1, cubes),
                (shown & self.colours_shown.unsqueeze(1)).expand(-1, cubes),
            ],
            dim=1,
        )
        obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        return obs.scatter_(1, index, value.float())

    # -- reference policies --------------------------------------------------------------

    def oracle_action(self) -> torch.Tensor:
        """Shortest path to the target around the other cubes (breadth-first distances)."""
        cells = self.grid_size * self.grid_size
        target_cell = self.cube_cell.gather(1, self.target.unsqueeze(1))
        blocked = torch.zeros(self.num_envs, cells, dtype=torch.bool, device=self.device)
        blocked.scatter_(1, self.cube_cell, True).scatter_(1, target_cell, False)
        distance = torch.full((self.num_envs, cells), float("inf"), device=self.device)
        distance.scatter_(1, target_cell, 0.0)
        # No shortest path is longer than 4 G - 6 (free ray, half the border, free ray).
        for _ in range(4 * self.grid_size):
            nearest = distance.index_select(1, self.neighbour_cells.flatten()).view(self.num_envs, cells, 4).amin(2)
            distance = torch.minimum(distance, nearest + 1).masked_fill_(blocked, float("inf"))
        options = self.neighbour_cells.index_select(0, self._agent_cell())
        best = distance.gather(1, options).argmin(1)
        return torch.where(self.elapsed_steps >= self.watch_steps, best, UP)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Blind to the layout: step off the border, then circle the interior's outer ring
        clockwise. The first cube met has a uniform colour, so this reaches 1/N whenever a
        cube lies on that ring, which is certain when N > (G - 4)^2 (the 5 x 5 presets); on the
        7 x 7 presets cubes keep teleporting onto the ring, and it meets one before the time
        limit in about 96% of episodes (measured success 0.241, chance 0.25)."""
        size = self.grid_size
        x = obs[:, :size].argmax(1)
        y = obs[:, size : 2 * size].argmax(1)
        low, high = 1, size - 2
        action = torch.full_like(x, UP)
        action = torch.where((y == low) & (x < high), RIGHT, action)
        action = torch.where((x == high) & (y < high), DOWN, action)
        action = torch.where((y == high) & (x > low), LEFT, action)
        action = torch.where((x == low) & (y > low), UP, action)
        action = torch.where(y == 0, DOWN, torch.where(y == size - 1, UP, action))
        return torch.where(x == 0, RIGHT, torch.where(x == size - 1, LEFT, action))


_ACTING = {"grid_size": 7, "num_cubes": 4, "watch_steps": 1, "teleport_prob": 0.5, "teleport_phase": "act"}
_WATCHING = {"grid_size": 5, "num_cubes": 4, "watch_steps": 8, "teleport_prob": 0.5, "teleport_phase": "watch"}
PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    "color-cubes-trivial": (ColorCubes, {"grid_size": 5, "num_cubes": 3, "watch_steps": 1, "teleport_prob": 0.0}),
    "color-cubes-medium": (ColorCubes, _ACTING),
    "color-cubes-extreme": (ColorCubes, {**_ACTING, "hide_colours_on_update": True}),
    "color-cubes-watch-medium": (ColorCubes, _WATCHING),
    "color-cubes-watch-extreme": (ColorCubes, {**_WATCHING, "hide_colours_on_update": True}),
}
"""Medium/Extreme follow the published dynamics (cubes move while the agent walks); the watch-*
presets are memrl's earlier variant (all moves before the agent may act)."""
PRESETS["color-cubes"] = PRESETS["color-cubes-trivial"]

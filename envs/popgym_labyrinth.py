"""POPGym's LabyrinthEscape and LabyrinthExplore (Morad et al., ICLR 2023) as batched torch envs, equal to popgym 1.0.7.

Both walk an agent through a maze drawn afresh every episode, as popgym 1.0.7 draws it with
mazelib 0.9.16 (`popgym/core/maze.py`): a `maze_size` x `maze_size` level (10 / 14 / 18) is a grid of
S = maze_size + 1 squares a side whose (maze_size / 2)^2 cells sit at odd (row, column), walls
and pillars between them; squares are numbered row * S + column. memrl draws the maze with its
own batched generator (`_grow_next_mazes`), the same random process as mazelib's hunt-and-kill
with random hunting:
- a uniformly random first cell; then, from the current cell, carve to a uniformly random
  unvisited neighbour cell (opening the wall between) until none is left;
- then hunt: draw uniformly random cells until one is visited and has an unvisited neighbour,
  and carve on from it. mazelib draws at most S^2 hunt cells in all; a maze whose hunts run
  out keeps its unvisited cells as solid wall (popgym 1.0.7 never showed one in 9000 mazes).
memrl draws the failed hunts of a hunt at once (their number is geometric, as each draw
succeeds with probability (cells worth hunting) / (cells), and the cell found is uniform among
those), so every iteration carves one cell and a maze is complete after cells - 1 iterations.
Entrances (mazelib's `generate_entrances(start_outer=True)`): a uniformly random side of the
border holds the start, at a uniformly random odd position along it; the goal is at a uniformly
random odd position of the opposite side.

Cell values are popgym's: FREE 0, OBSTACLE 1, START 2, GOAL 3 (HIDDEN 4 is in the observation
space but never shown). The start square holds START; LabyrinthEscape puts GOAL on the goal
square, LabyrinthExplore leaves it a wall. Actions (4): popgym's LEFT 0, RIGHT 1, UP 2, DOWN 3; a
move into a wall, or off the grid, leaves the agent where it is.
Observation (50): popgym's MultiDiscrete([5] * 9 + [5]) as concatenated one-hots: the 3 x 3 view
of cell values around the agent, row by row (9 x 5), then the last action (5; NONE = 4 at reset).
The view is popgym's slice `grid[max(y-1, 0) : min(y+1, S) + 1, max(x-1, 0) : min(x+1, S) + 1]`,
padded with OBSTACLE after its end to 3 x 3: on the top row or left column (where a start or goal
can be) the agent's square is therefore not in the centre but at the view's top / left edge.
Episodes are truncated after 1023 steps (popgym's `curr_step == episode_length - 1` with
episode_length 1024); every step costs 1/1024. popgym warns that mazes "have been shown to be
solvable without the use of memory"; here a memoryless wall follower succeeds wherever the
oracle does (see `memoryless_action`).

Every env carries the maze its next episode will use, grown `growth_per_step` generator
iterations each step, and swaps it in when its episode ends (`_start_episodes`). On accelerators
that is enough to complete it within the shortest possible episode, so stepping never syncs
with the host. On the CPU, where looking at a tensor costs nothing, it is enough within the
shortest episode in a complete maze, and a next maze still unfinished when its episode starts
(possible only after a maze whose hunts ran out) is finished then.
"""

from __future__ import annotations

import math

import torch

from envs.base import BatchedEnv

FREE, OBSTACLE, START, GOAL, HIDDEN = 0, 1, 2, 3, 4
"""popgym's Cell values."""
NUM_CELL_VALUES = 5
LEFT, RIGHT, UP, DOWN, NONE = 0, 1, 2, 3, 4
"""popgym's Actions (NONE is the last action shown at reset)."""
EPISODE_LENGTH = 1024
"""popgym's episode_length at every level: the step cost is 1/1024 and episodes are truncated after 1023 steps."""
MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))
"""(row, column) step of LEFT, RIGHT, UP, DOWN."""
TURN_RIGHT = (UP, DOWN, RIGHT, LEFT)
TURN_LEFT = (DOWN, UP, LEFT, RIGHT)
TURN_BACK = (RIGHT, LEFT, DOWN, UP)
"""The heading after turning right / left / back from LEFT, RIGHT, UP, DOWN."""


def shortest_distances(grid: torch.Tensor, targets: torch.Tensor, side: int) -> torch.Tensor:
    """Moves from every square of `grid` (cell values, [K, side^2]) to the nearest of `targets`
    (bool [K, side^2]) through non-wall squares, int64 [K, side^2]; side^2 where none is reachable.
    Breadth-first relaxation until nothing changes (syncs with the host once per move of distance)."""
    unreachable = side * side
    walkable = (grid != OBSTACLE).reshape(-1, side, side)
    distance = torch.where(targets, 0, unreachable).reshape(-1, side, side)
    while True:
        padded = torch.nn.functional.pad(distance, (1, 1, 1, 1), value=unreachable)
        nearest_neighbour = torch.minimum(
            torch.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]), torch.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1])
        )
        relaxed = torch.where(walkable, torch.minimum(distance, nearest_neighbour + 1), distance)
        if torch.equal(relaxed, distance):
            return distance.flatten(1)
        distance = relaxed


class Labyrinth(BatchedEnv):
    """A maze of popgym's kind per env; subclasses give the rewards and the goal (module docstring)."""

    obs_dim = 9 * NUM_CELL_VALUES + NUM_CELL_VALUES
    num_actions = 4
    obs_low = 0.0
    obs_high = 1.0
    max_episode_steps = EPISODE_LENGTH - 1
    chance_success = 1.0
    oracle_anchor: int
    """The cell value of the square oracle_action finds its way by (GOAL or START)."""
    marks_goal: bool
    """Whether the goal square holds GOAL (LabyrinthEscape) or stays a wall (LabyrinthExplore)."""

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, maze_size: int = 10):
        if isinstance(maze_size, bool) or not isinstance(maze_size, int) or maze_size < 6 or maze_size % 2:
            raise ValueError(f"maze_size must be an even integer >= 6 (popgym's levels: 10, 14, 18), got {maze_size!r}")
        super().__init__(num_envs, device, seed)
        self.maze_size = maze_size
        self.side = maze_size + 1
        self.cells_per_side = maze_size // 2
        self.num_cells = self.cells_per_side**2
        self.num_squares = self.side**2
        shortest_episode = self._shortest_episode(in_complete_maze=self.device.type == "cpu")
        self.growth_per_step = math.ceil((self.num_cells - 1) / shortest_episode)
        self._build_tables()
        squares = (num_envs, self.num_squares)
        self.grid = torch.full(squares, OBSTACLE, dtype=torch.int64, device=self.device)
        """Cell value of every square, int64 [N, S^2]."""
        self.position = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.last_action = torch.full((num_envs,), NONE, dtype=torch.int64, device=self.device)
        self.next_open = torch.zeros(squares, dtype=torch.bool, device=self.device)
        """The open squares of each env's next maze, as grown so far, bool [N, S^2]."""
        self.next_cursor = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        """The cell the next maze's generator carves from, int64 [N] (cell index row * cells_per_side + column)."""
        self.next_hunts = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        """Hunt cells the next maze's generator has drawn, int64 [N] (at most S^2)."""
        self.next_cells_left = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.next_done = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        """The next maze is complete: every cell carved, or the hunts ran out, bool [N]."""
        self.next_start = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.next_goal = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._oracle_cache: dict = {}
        """oracle_action's distances to its anchor square per maze, and the grids they belong to (not env state)."""

    def _shortest_episode(self, in_complete_maze: bool = False) -> int:
        """Fewest steps an episode can last (in any maze, or in one whose every cell is open)."""
        raise NotImplementedError

    def _build_tables(self) -> None:
        n, side = self.cells_per_side, self.side
        cells = torch.arange(self.num_cells, device=self.device)
        cell_row, cell_column = cells // n, cells % n
        self.cell_square = (2 * cell_row + 1) * side + 2 * cell_column + 1
        neighbours, walls = [], []
        for row_step, column_step in MOVES:
            row, column = cell_row + row_step, cell_column + column_step
            inside = (row >= 0) & (row < n) & (column >= 0) & (column < n)
            neighbours.append(torch.where(inside, row * n + column, self.num_cells))
            walls.append(self.cell_square + row_step * side + column_step)
        self.cell_neighbour = torch.stack(neighbours, 1)
        """Neighbour cell of each cell in each direction, int64 [C, 4]; C where it is outside."""
        self.cell_wall = torch.stack(walls, 1)
        """The square between each cell and that neighbour, int64 [C, 4]."""
        self.move_row = torch.tensor([row for row, _ in MOVES], device=self.device)
        self.move_column = torch.tensor([column for _, column in MOVES], device=self.device)
        self.view_offsets = torch.arange(3, device=self.device)

    # -- the maze generator ------------------------------------------------------------------

    def _begin_next_mazes(self, mask: torch.Tensor) -> None:
        """Start a new next maze where `mask` [N]: its entrances and first cell (drawn for every env)."""
        n, side, last = self.cells_per_side, self.side, self.side - 1
        first_cell = self.randint(0, self.num_cells, (self.num_envs,))
        start_side = self.randint(0, 4, (self.num_envs,))
        start_along = 2 * self.randint(0, n, (self.num_envs,)) + 1
        goal_along = 2 * self.randint(0, n, (self.num_envs,)) + 1
        # Sides north, south, west, east; the goal is on the opposite side.
        start_row = torch.stack([torch.zeros_like(start_along), torch.full_like(start_along, last), start_along, start_along])
        start_column = torch.stack([start_along, start_along, torch.zeros_like(start_along), torch.full_like(start_along, last)])
        goal_row = torch.stack([torch.full_like(goal_along, last), torch.zeros_like(goal_along), goal_along, goal_along])
        goal_column = torch.stack([goal_along, goal_along, torch.full_like(goal_along, last), torch.zeros_like(goal_along)])
        pick = start_side[None]
        start = start_row.gather(0, pick)[0] * side + start_column.gather(0, pick)[0]
        goal = goal_row.gather(0, pick)[0] * side + goal_column.gather(0, pick)[0]
        self.next_start = torch.where(mask, start, self.next_start)
        self.next_goal = torch.where(mask, goal, self.next_goal)
        first_open = torch.zeros_like(self.next_open).scatter_(1, self.cell_square[first_cell][:, None], True)
        self.next_open = torch.where(mask[:, None], first_open, self.next_open)
        self.next_cursor = torch.where(mask, first_cell, self.next_cursor)
        self.next_hunts.masked_fill_(mask, 0)
        self.next_cells_left.masked_fill_(mask, self.num_cells - 1)
        self.next_done &= ~mask

    def _grow_next_mazes(self) -> None:
        """One generator iteration for every env's next maze: hunt if the walk is stuck, then carve one cell."""
        everyone = torch.arange(self.num_envs, device=self.device)
        visited = self.next_open[:, self.cell_square]
        visited_or_outside = torch.cat([visited, torch.ones_like(visited[:, :1])], dim=1)
        can_carve = ~visited_or_outside[:, self.cell_neighbour]  # [N, C, 4]
        worth_hunting = visited & can_carve.any(2)
        stuck = ~worth_hunting[everyone, self.next_cursor]
        num_worth = worth_hunting.sum(1)
        # Hunt draws that miss before the first hit: geometric with success num_worth / C.
        hit_probability = (num_worth.float() / self.num_cells).clamp(max=1 - 1e-6)
        uniform = self.random(self.num_envs, 1 + self.num_cells + 4)
        misses = torch.floor(torch.log(1.0 - uniform[:, 0]) / torch.log1p(-hit_probability)).nan_to_num(posinf=self.num_squares)
        hunts = self.next_hunts + misses.clamp(max=self.num_squares).long() + 1
        self.next_done |= stuck & ((num_worth == 0) | (hunts > self.num_squares))
        hunted = torch.where(worth_hunting, uniform[:, 1 : 1 + self.num_cells], -1.0).argmax(1)
        hunting = stuck & ~self.next_done
        cursor = torch.where(hunting, hunted, self.next_cursor)
        self.next_hunts = torch.where(hunting, hunts, self.next_hunts)
        direction = torch.where(can_carve[everyone, cursor], uniform[:, 1 + self.num_cells :], -1.0).argmax(1)
        carving = ~self.next_done
        new_cell = self.cell_neighbour[cursor, direction].clamp(max=self.num_cells - 1)
        opened = torch.stack([self.cell_square[new_cell], self.cell_wall[cursor, direction]], 1)
        self.next_open.scatter_(1, opened, carving[:, None].expand(-1, 2) | self.next_open.gather(1, opened))
        self.next_cursor = torch.where(carving, new_cell, cursor)
        self.next_cells_left -= carving.long()
        self.next_done |= self.next_cells_left == 0

    def _next_mazes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mazes the next episodes start in -> (grid int64 [N, S^2], start square [N], goal square [N])."""
        grid = torch.where(self.next_open, FREE, OBSTACLE)
        grid.scatter_(1, self.next_start[:, None], START)
        if self.marks_goal:
            grid.scatter_(1, self.next_goal[:, None], GOAL)
        return grid, self.next_start, self.next_goal

    def _generate_next_mazes(self) -> None:
        """Draw a complete next maze for every env."""
        self._begin_next_mazes(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        for _ in range(self.num_cells - 1):
            self._grow_next_mazes()

    # -- the episode ------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if seed is not None:
            self.seed(seed)
        self._generate_next_mazes()
        return super().reset()

    def _start_episodes(self, mask: torch.Tensor) -> None:
        if self.device.type == "cpu":
            while bool((mask & ~self.next_done).any()):
                self._grow_next_mazes()
        grid, start, _ = self._next_mazes()
        self.grid = torch.where(mask[:, None], grid, self.grid)
        self.position = torch.where(mask, start, self.position)
        self.last_action.masked_fill_(mask, NONE)
        self._begin_next_mazes(mask)

    def _move(self, action: torch.Tensor) -> torch.Tensor:
        """The square `action` [N] leads to (the agent's own where a wall or the border is in the way), int64 [N]."""
        row = (self.position // self.side + self.move_row[action]).clamp(0, self.side - 1)
        column = (self.position % self.side + self.move_column[action]).clamp(0, self.side - 1)
        target = row * self.side + column
        blocked = self.grid.gather(1, target[:, None]).squeeze(1) == OBSTACLE
        return torch.where(blocked, self.position, target)

    def _step_agent(self, action: torch.Tensor) -> None:
        for _ in range(self.growth_per_step):
            self._grow_next_mazes()
        self.position = self._move(action.long())
        self.last_action = action.to(torch.int64, copy=True)  # the caller's tensor must not change on a restart

    def _observe(self) -> torch.Tensor:
        row, column = self.position // self.side, self.position % self.side
        rows = (row - 1).clamp(min=0)[:, None] + self.view_offsets  # [N, 3]
        columns = (column - 1).clamp(min=0)[:, None] + self.view_offsets
        rows_shown = rows <= (row + 1).clamp(max=self.side - 1)[:, None]
        columns_shown = columns <= (column + 1).clamp(max=self.side - 1)[:, None]
        squares = rows.clamp(max=self.side - 1)[:, :, None] * self.side + columns.clamp(max=self.side - 1)[:, None, :]
        view = self.grid.gather(1, squares.flatten(1))
        view = torch.where((rows_shown[:, :, None] & columns_shown[:, None, :]).flatten(1), view, OBSTACLE)
        values = torch.arange(NUM_CELL_VALUES, device=self.device)
        view_one_hot = (view[:, :, None] == values).flatten(1)
        return torch.cat([view_one_hot, self.last_action[:, None] == values], dim=1).float()

    # -- policies -----------------------------------------------------------------------------

    def distances_to(self, targets: torch.Tensor) -> torch.Tensor:
        """Moves from every square to the nearest of `targets` (bool [N, S^2]) through non-wall squares,
        int64 [N, S^2]; S^2 where none is reachable."""
        return shortest_distances(self.grid, targets, self.side)

    def _anchor_distances(self) -> torch.Tensor:
        """Moves from every square to the oracle's anchor square (GOAL, or START for LabyrinthExplore),
        int64 [N, S^2], computed once per maze (for the envs whose maze changed; syncs with the host)."""
        cache = self._oracle_cache
        if cache.get("grid") is None or cache["grid"].shape != self.grid.shape:
            cache.update(grid=torch.full_like(self.grid, -1), distance=torch.zeros_like(self.grid))
        stale = (cache["grid"] != self.grid).any(1)
        if bool(stale.any()):
            rows = stale.nonzero().squeeze(1)
            grid = self.grid[rows]
            cache["distance"][rows] = shortest_distances(grid, grid == self.oracle_anchor, self.side)
            cache["grid"][rows] = grid
        return cache["distance"]

    def _moves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Square each action leads to, int64 [N, 4], and whether it moves the agent, bool [N, 4]."""
        after_move = torch.stack([self._move(torch.full_like(self.position, action)) for action in range(4)], 1)
        return after_move, after_move != self.position[:, None]

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The right-hand wall follower, from the observation alone (the last action is its heading).

        Which moves are open is read off the 3 x 3 view: its centre's neighbours, except on a start
        square on the top row or left column, where popgym's view begins at the agent (START at its
        top / left edge, OBSTACLE padding at its far edge, last action NONE or the move that came
        back out) and the only open move leads in. The follower tries right of its heading, ahead,
        left, then back; in a perfect maze it walks every square and returns, so it reaches the goal
        (or every square) within 2 (squares - 1) moves wherever any policy can.
        """
        view = obs[:, : 9 * NUM_CELL_VALUES].reshape(-1, 3, 3, NUM_CELL_VALUES).argmax(3)
        heading = obs[:, 9 * NUM_CELL_VALUES :].argmax(1)
        open_left, open_right = view[:, 1, 0] != OBSTACLE, view[:, 1, 2] != OBSTACLE
        open_up, open_down = view[:, 0, 1] != OBSTACLE, view[:, 2, 1] != OBSTACLE
        on_top_start = (view[:, 0, 1] == START) & (view[:, 2] == OBSTACLE).all(1) & ((heading == NONE) | (heading == UP))
        on_left_start = (view[:, 1, 0] == START) & (view[:, :, 2] == OBSTACLE).all(1) & ((heading == NONE) | (heading == LEFT))
        open_moves = torch.stack([open_left, open_right, open_up, open_down], 1)
        only_down = torch.tensor([False, False, False, True], device=obs.device)
        only_right = torch.tensor([False, True, False, False], device=obs.device)
        open_moves = torch.where(on_top_start[:, None], only_down, open_moves)
        open_moves = torch.where(on_left_start[:, None], only_right, open_moves)
        facing = heading.clamp(max=DOWN)
        turns = torch.tensor([TURN_RIGHT, (LEFT, RIGHT, UP, DOWN), TURN_LEFT, TURN_BACK], device=obs.device)
        preference = turns[:, facing].T  # [N, 4]: right of the heading, ahead, left, back
        preferred_open = open_moves.gather(1, preference)
        return preference.gather(1, preferred_open.long().argmax(1, keepdim=True)).squeeze(1)


class LabyrinthEscape(Labyrinth):
    """Find the exit of the maze (popgym's LabyrinthEscape).

    The agent starts on the start square; the goal square (GOAL) is on the opposite side of the
    border. Every step earns -1/1024, and the step onto the goal earns 1 more and terminates the
    episode, so an escape in T steps returns 1 - T/1024; a maze not escaped is truncated after
    1023 steps (return -1023/1024). popgym flags an escape on the 1023rd step both terminated and
    truncated; memrl reports it terminated only.

    success = escaped. `oracle_action` walks the shortest path (it reads the maze); the
    memoryless wall follower (`memoryless_action`) escapes too, later: chance_success = 1.
    The shortest episode is S - 1 steps (the goal is across the grid).
    """

    marks_goal = True
    oracle_anchor = GOAL

    def _shortest_episode(self, in_complete_maze: bool = False) -> int:
        return self.side - 1

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._step_agent(action)
        escaped = self.grid.gather(1, self.position[:, None]).squeeze(1) == GOAL
        reward = torch.where(escaped, 1.0 - 1.0 / EPISODE_LENGTH, -1.0 / EPISODE_LENGTH)
        return reward, escaped, escaped

    def oracle_action(self) -> torch.Tensor:
        """A move along the shortest path to the goal (reads the maze); LEFT where it is out of reach."""
        after_move, moves = self._moves()
        return torch.where(moves, self._anchor_distances().gather(1, after_move), self.num_squares + 1).argmin(1)


class LabyrinthExplore(Labyrinth):
    """Visit every open square of the maze (popgym's LabyrinthExplore).

    The agent starts on the start square (visited); the goal square stays a wall. A step onto a
    square not visited before earns 1/F (F = the FREE squares, the start excluded), any other
    step -1/1024; the episode terminates when every non-wall square has been visited (a return
    of 1 minus 1/1024 per repeated step) and is truncated after 1023 steps.

    success = every square visited. `oracle_action` explores depth first (it reads the maze); the
    memoryless wall follower visits every square too: chance_success = 1. The shortest episode is
    2 cells - 1 steps in a complete maze and 7 in any: the generator's first walk carves at least 4
    cells (a walk on a grid cannot be stuck before), so a maze has at least 7 open squares besides
    the start.
    """

    marks_goal = False
    oracle_anchor = START

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, maze_size: int = 10):
        super().__init__(num_envs, device, seed, maze_size=maze_size)
        self.visited = torch.zeros_like(self.next_open)
        """The squares the agent has stood on this episode, bool [N, S^2]."""
        self.new_square_reward = torch.zeros(num_envs, device=self.device)

    def _shortest_episode(self, in_complete_maze: bool = False) -> int:
        return 2 * self.num_cells - 1 if in_complete_maze else 7

    def _start_episodes(self, mask: torch.Tensor) -> None:
        super()._start_episodes(mask)
        started_on = torch.zeros_like(self.visited).scatter_(1, self.position[:, None], True)
        self.visited = torch.where(mask[:, None], started_on, self.visited)
        free_squares = (self.grid == FREE).sum(1)
        self.new_square_reward = torch.where(mask, 1.0 / free_squares.clamp(min=1).float(), self.new_square_reward)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._step_agent(action)
        new_square = ~self.visited.gather(1, self.position[:, None]).squeeze(1)
        self.visited.scatter_(1, self.position[:, None], True)
        reward = torch.where(new_square, self.new_square_reward, -1.0 / EPISODE_LENGTH)
        explored = (self.visited == (self.grid != OBSTACLE)).all(1)
        return reward, explored, explored

    def oracle_action(self) -> torch.Tensor:
        """Depth first (reads the maze): the first move onto a square not visited yet, else one back
        towards the start; in a maze (a tree) it visits every square within 2 (squares - 1) moves."""
        after_move, moves = self._moves()
        onto_new = moves & ~self.visited.gather(1, after_move)
        back = torch.where(moves, self._anchor_distances().gather(1, after_move), self.num_squares + 1).argmin(1)
        return torch.where(onto_new.any(1), onto_new.long().argmax(1), back)


LEVELS = {"easy": 10, "medium": 14, "hard": 18}
"""popgym 1.0.7's levels: maze_dims (maze_size, maze_size); episode_length 1024 at every level."""

PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    f"popgym-labyrinth-{task}-{level}": (task_class, {"maze_size": size})
    for task, task_class in (("escape", LabyrinthEscape), ("explore", LabyrinthExplore))
    for level, size in LEVELS.items()
}

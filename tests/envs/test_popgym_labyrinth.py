"""POPGym's LabyrinthEscape and LabyrinthExplore (envs/popgym_labyrinth.py): rules on a hand-built
maze, memrl's maze generator, oracle and wall follower, and equality to popgym 1.0.7 (with mazelib).

Statistical checks compare memrl's generator with popgym's by a two-sample Kolmogorov-Smirnov
test at false-alarm rate 1e-4 (conservative on these integer-valued properties).
"""

from __future__ import annotations

import math
import warnings
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from envs.popgym import PRESETS
from envs.popgym_labyrinth import EPISODE_LENGTH, GOAL, LEFT, NONE, OBSTACLE, RIGHT, START, UP, DOWN, LabyrinthEscape, LabyrinthExplore
from scripts.popgym_parity import encode, labyrinth_env, make_popgym_env, play_side_by_side

NAMES = [f"popgym-labyrinth-{task}-{level}" for task in ("escape", "explore") for level in ("easy", "medium", "hard")]
needs_popgym = pytest.mark.skipif(
    find_spec("popgym") is None or find_spec("mazelib") is None, reason="popgym and mazelib (the dev extra) are not installed"
)
STEP_COST = -1 / EPISODE_LENGTH


def make(name: str, num_envs: int, seed: int = 0, device: str = "cpu"):
    task_class, kwargs = PRESETS[name]
    return task_class(num_envs=num_envs, device=device, seed=seed, **kwargs)


def fixed_maze(task_class, rows: list[str]):
    """A one-env maze whose every episode is `rows` ('#' wall, '.' free, 'S' start, 'G' goal, a wall
    in LabyrinthExplore), maze_size = len(rows) - 1."""
    values = {"#": OBSTACLE, ".": 0, "S": START, "G": GOAL if task_class.marks_goal else OBSTACLE}
    grid = torch.tensor([[values[square] for row in rows for square in row]])
    start, goal = ("".join(rows).index(mark) for mark in "SG")

    class Fixed(task_class):
        def _next_mazes(self):
            return grid.clone(), torch.tensor([start]), torch.tensor([goal])

    return Fixed(num_envs=1, seed=0, maze_size=len(rows) - 1)


SNAKE = ["#S#####", "#.....#", "#####.#", "#.....#", "#.#####", "#.....#", "#####G#"]
"""Nine cells in one corridor from the start (top row) to the goal (bottom row): 18 moves."""
SNAKE_PATH = [DOWN] + [RIGHT] * 4 + [DOWN] * 2 + [LEFT] * 4 + [DOWN] * 2 + [RIGHT] * 4 + [DOWN]


def view(obs: torch.Tensor) -> tuple[list[list[int]], int]:
    """Decode one observation [50] -> (3 x 3 cell values, last action)."""
    cells = obs[:45].reshape(3, 3, 5).argmax(2).tolist()
    return cells, int(obs[45:].argmax())


def test_presets_follow_popgym_levels():
    for task_class, task in ((LabyrinthEscape, "escape"), (LabyrinthExplore, "explore")):
        for level, size in (("easy", 10), ("medium", 14), ("hard", 18)):
            assert PRESETS[f"popgym-labyrinth-{task}-{level}"] == (task_class, {"maze_size": size})
    env = make("popgym-labyrinth-explore-hard", num_envs=2)
    assert (env.obs_dim, env.num_actions, env.max_episode_steps, env.side, env.num_cells) == (50, 4, 1023, 19, 81)
    obs, info = env.reset()
    assert obs.shape == (2, 50) and env.single_observation_space.contains(obs[0].numpy()) and info["is_first"].all()


@pytest.mark.parametrize("maze_size", [7, 4, 10.0, True, "10"])
def test_bad_maze_size_is_rejected(maze_size):
    with pytest.raises(ValueError, match=r"maze_size must be an even integer >= 6 \(popgym's levels: 10, 14, 18\), got"):
        LabyrinthEscape(num_envs=1, maze_size=maze_size)


def test_escape_rules_on_a_hand_built_maze():
    env = fixed_maze(LabyrinthEscape, SNAKE)
    obs, _ = env.reset()
    # popgym's view on the top row starts at the agent's row: the start is on the view's top edge.
    assert view(obs[0]) == ([[1, 2, 1], [1, 0, 0], [1, 1, 1]], NONE)
    for action in (UP, LEFT):  # off the grid, into a wall: the agent stays
        obs, reward, terminated, truncated, _ = env.step(torch.tensor([action]))
        assert float(reward[0]) == pytest.approx(STEP_COST) and not terminated[0] and view(obs[0])[1] == action
    obs, *_ = env.step(torch.tensor([DOWN]))
    assert view(obs[0]) == ([[1, 2, 1], [1, 0, 0], [1, 1, 1]], DOWN)  # one square down, the same view
    env.reset()
    for step, action in enumerate(SNAKE_PATH):
        assert int(env.oracle_action()[0]) == action
        action_tensor = torch.tensor([action])
        obs, reward, terminated, truncated, info = env.step(action_tensor)
        assert bool(terminated[0]) == (step == 17) and not truncated[0]
    assert action_tensor.tolist() == [DOWN]  # the restart did not write NONE into the caller's actions
    assert float(reward[0]) == pytest.approx(1 + STEP_COST) and info["success"].all()
    assert float(info["episode_return"][0]) == pytest.approx(1 - 18 / 1024) and int(info["episode_length"][0]) == 18
    assert view(info["final_obs"][0]) == ([[0, 0, 1], [1, 3, 1], [1, 1, 1]], DOWN)  # bottom row: padded below
    assert view(obs[0]) == ([[1, 2, 1], [1, 0, 0], [1, 1, 1]], NONE)  # the next episode, same step
    env.reset()
    for action in [UP] * 1005 + SNAKE_PATH:  # escaping on the 1023rd step terminates (popgym: also truncated)
        _, _, terminated, truncated, info = env.step(torch.tensor([action]))
    assert terminated.all() and not truncated.any() and int(info["episode_length"][0]) == 1023
    env.reset()
    for _ in range(1023):
        _, _, terminated, truncated, info = env.step(torch.tensor([UP]))
    assert truncated.all() and not terminated.any() and not info["success"].any()
    assert float(info["episode_return"][0]) == pytest.approx(1023 * STEP_COST, abs=1e-4)


def test_explore_rules_on_a_hand_built_maze():
    env = fixed_maze(LabyrinthExplore, SNAKE)  # the goal square stays a wall: 17 free squares besides the start
    env.reset()
    rewards = [float(env.step(torch.tensor([action]))[1][0]) for action in [UP, DOWN, UP, DOWN]]
    assert rewards == pytest.approx([STEP_COST, 1 / 17, STEP_COST, STEP_COST])  # the start and square (1, 1) again
    env.reset()
    for step, action in enumerate(SNAKE_PATH[:-1]):
        assert int(env.oracle_action()[0]) == action
        obs, reward, terminated, truncated, info = env.step(torch.tensor([action]))
        assert float(reward[0]) == pytest.approx(1 / 17) and bool(terminated[0]) == (step == 16)
    assert info["success"].all() and float(info["episode_return"][0]) == pytest.approx(1.0)
    assert view(info["final_obs"][0])[0] == [[1, 1, 1], [0, 0, 1], [1, 1, 1]]  # the goal square (below) is a wall here


def open_cell_sides(env, grid: torch.Tensor) -> torch.Tensor:
    """Open sides of every cell (entrances included), int64 [N, cells]."""
    return (grid != OBSTACLE)[:, env.cell_wall].sum(2)


@pytest.mark.parametrize("name", ["popgym-labyrinth-escape-easy", "popgym-labyrinth-explore-hard"])
def test_generated_mazes_are_perfect_with_entrances_on_opposite_sides(name):
    """Every cell open and reachable from the start, 2 cells - 1 passages (a tree), the start and goal
    at odd positions of opposite sides of the border."""
    env = make(name, num_envs=300, seed=1)
    env.reset()
    side, last = env.side, env.side - 1
    open_squares = (env.grid != OBSTACLE).sum(1)
    assert (open_squares == 2 * env.num_cells - 1 + (2 if env.marks_goal else 1)).all()
    assert (env.distances_to(env.grid == START) < env.num_squares).sum(1).eq(open_squares).all()
    start_row, start_column = env.position // side, env.position % side
    assert ((start_row % 2 == 1) ^ (start_column % 2 == 1)).all()
    assert ((start_row == 0) | (start_row == last) | (start_column == 0) | (start_column == last)).all()
    goal_row, goal_column = env.next_goal // side, env.next_goal % side  # the next mazes' goals: drawn the same way
    next_start_row, next_start_column = env.next_start // side, env.next_start % side
    assert (((goal_row - next_start_row).abs() == last) | ((goal_column - next_start_column).abs() == last)).all()
    assert ((goal_row % 2 == 1) ^ (goal_column % 2 == 1)).all()
    if env.marks_goal:
        goal_square = (env.grid == GOAL).long().argmax(1)
        assert (((goal_square // side - start_row).abs() == last) | ((goal_square % side - start_column).abs() == last)).all()


@pytest.mark.parametrize("name", NAMES)
def test_each_generator_iteration_carves_one_cell(name):
    """cells - 1 iterations complete every maze (what growth_per_step relies on), one fewer does not;
    on the CPU an episode that starts before its next maze is complete gets it finished."""
    env = make(name, num_envs=200, seed=2)
    env._begin_next_mazes(torch.ones(200, dtype=torch.bool))
    for _ in range(env.num_cells - 2):
        env._grow_next_mazes()
    assert not env.next_done.any() and (env.next_open.sum(1) == 2 * env.num_cells - 3).all()
    env._grow_next_mazes()
    assert env.next_done.all() and (env.next_open.sum(1) == 2 * env.num_cells - 1).all()
    assert env.growth_per_step * env._shortest_episode(in_complete_maze=True) >= env.num_cells - 1
    assert math.ceil((env.num_cells - 1) / env._shortest_episode()) * env._shortest_episode() >= env.num_cells - 1
    env._begin_next_mazes(torch.ones(200, dtype=torch.bool))
    env._start_episodes(torch.arange(200) % 2 == 0)
    assert ((env.grid[::2] != OBSTACLE).sum(1) == 2 * env.num_cells - 1 + (2 if env.marks_goal else 1)).all()


@pytest.mark.parametrize("name", ["popgym-labyrinth-escape-medium", "popgym-labyrinth-explore-easy"])
def test_oracle_and_wall_follower_succeed_in_every_maze(name):
    """Over auto-resets: the oracle succeeds in every maze (an escape in exactly the shortest path),
    so does the memoryless wall follower (never sooner than the oracle's escape); every new maze is complete."""
    env = make(name, num_envs=32, seed=3)
    first_returns = {}
    for policy in ("oracle", "memoryless"):
        obs, _ = env.reset(seed=4)
        shortest = env.distances_to(env.grid == GOAL).gather(1, env.position[:, None]).squeeze(1)
        done_once = torch.zeros(32, dtype=torch.bool)
        first_return = torch.zeros(32)
        while not done_once.all():
            action = env.oracle_action() if policy == "oracle" else env.memoryless_action(obs)
            obs, _, _, truncated, info = env.step(action)
            assert not truncated.any() and info["success"].eq(info["episode_done"]).all()
            first_return = torch.where(info["episode_done"] & ~done_once, info["episode_return"], first_return)
            done_once |= info["episode_done"]
            restarted = env.grid[info["episode_done"]]
            assert ((restarted != OBSTACLE).sum(1) == 2 * env.num_cells - 1 + (2 if env.marks_goal else 1)).all()
        first_returns[policy] = first_return
    assert (first_returns["memoryless"] > 0).all() and (first_returns["oracle"] > 0).all()
    if env.marks_goal:
        torch.testing.assert_close(first_returns["oracle"], 1 - shortest.float() / 1024)
        assert (first_returns["memoryless"] <= first_returns["oracle"] + 1e-6).all()


def test_seeded_runs_are_identical_and_draws_do_not_depend_on_restarts():
    def run(seed: int):
        env = make("popgym-labyrinth-escape-easy", num_envs=4, seed=seed)
        actions = torch.randint(4, (300, 4), generator=torch.Generator().manual_seed(0))
        observations = [env.reset()[0]] + [env.step(action)[0] for action in actions]
        return torch.stack(observations)

    assert torch.equal(run(11), run(11)) and not torch.equal(run(11), run(12))
    left, right = make("popgym-labyrinth-explore-easy", num_envs=6, seed=21), make("popgym-labyrinth-explore-easy", num_envs=6, seed=21)
    left.reset()
    right.reset()
    for _ in range(left.num_cells):  # the next mazes are complete (an episode here lasts longer)
        left.step(torch.zeros(6, dtype=torch.int64))
        right.step(torch.zeros(6, dtype=torch.int64))
    left._start_episodes(torch.zeros(6, dtype=torch.bool))
    right._start_episodes(torch.tensor([True, False, True, True, False, False]))
    left.step(torch.zeros(6, dtype=torch.int64))
    right.step(torch.zeros(6, dtype=torch.int64))
    assert torch.equal(left.generator.get_state(), right.generator.get_state())


def test_state_dict_resumes_the_same_episodes():
    env = make("popgym-labyrinth-explore-easy", num_envs=4, seed=31)
    env.reset()
    for _ in range(30):
        env.step(env.oracle_action())
    saved = env.state_dict()
    continued = [env.step(env.oracle_action())[1] for _ in range(120)]
    restored = make("popgym-labyrinth-explore-easy", num_envs=4, seed=0)
    restored.load_state_dict(saved)
    assert all(torch.equal(restored.step(restored.oracle_action())[1], reward) for reward in continued)


# -- side by side with popgym 1.0.7 ---------------------------------------------------------------


@needs_popgym
@pytest.mark.parametrize("name", NAMES)
def test_equal_to_popgym_in_popgyms_maze(name):
    """In popgym's maze, the oracle and the wall follower (reading popgym's observations) give the
    same observations, rewards, terminations and returns step for step (random actions: test_popgym.py)."""
    result = play_side_by_side(name, lambda env, history, t: int(env.oracle_action()[0]), seed=5)
    assert result.mismatches == [] and result.memrl_length == result.popgym_length < 1023
    follower = play_side_by_side(name, lambda env, history, t: int(env.memoryless_action(torch.from_numpy(encode(env, history[t]))[None])[0]), seed=6)
    assert follower.mismatches == [] and follower.memrl_length == follower.popgym_length < 1023
    assert follower.memrl_return == pytest.approx(follower.popgym_return, abs=1e-5) and follower.popgym_return > 0


def popgym_mazes(name: str, count: int):
    """`count` of popgym's mazes (reset seeds 0 ..) loaded into one memrl env of `count` envs."""
    reference = make_popgym_env(name)
    grids, starts, goals = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for seed in range(count):
            reference.reset(seed=seed)
            aligned = labyrinth_env(PRESETS[name][0], PRESETS[name][1], reference)
            grid, start, goal = aligned._next_mazes()
            grids.append(grid)
            starts.append(start)
            goals.append(goal)
    env = make(name, num_envs=count)
    env.grid, env.position = torch.cat(grids), torch.cat(starts)
    return env


def maze_statistics(env) -> dict[str, np.ndarray]:
    """Per maze: moves from start to goal, dead-end cells (one open side), open squares."""
    path = env.distances_to(env.grid == GOAL).gather(1, env.position[:, None]).squeeze(1)
    return {
        "shortest path": path.numpy(),
        "dead ends": (open_cell_sides(env, env.grid) == 1).sum(1).numpy(),
        "open squares": (env.grid != OBSTACLE).sum(1).numpy(),
    }


def kolmogorov_smirnov_exceeds(left: np.ndarray, right: np.ndarray, alpha: float = 1e-4) -> tuple[float, float]:
    """Two-sample KS statistic and its critical value at `alpha` (asymptotic)."""
    support = np.union1d(left, right)
    left_cdf = np.searchsorted(np.sort(left), support, side="right") / len(left)
    right_cdf = np.searchsorted(np.sort(right), support, side="right") / len(right)
    critical = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((len(left) + len(right)) / (len(left) * len(right)))
    return float(np.abs(left_cdf - right_cdf).max()), critical


@needs_popgym
@pytest.mark.parametrize("name", ["popgym-labyrinth-escape-easy", "popgym-labyrinth-escape-medium", "popgym-labyrinth-escape-hard"])
def test_generator_draws_mazes_like_popgyms(name):
    """Shortest start-to-goal path, dead-end count and open squares of 300 popgym mazes and 1000 of
    memrl's follow the same distributions (KS at 1e-4); every maze of both is perfect (all open)."""
    env = make(name, num_envs=1000, seed=7)
    env.reset()
    ours, theirs = maze_statistics(env), maze_statistics(popgym_mazes(name, 300))
    for key in ours:
        statistic, critical = kolmogorov_smirnov_exceeds(ours[key], theirs[key])
        assert statistic <= critical, (key, statistic, critical, ours[key].mean(), theirs[key].mean())
    assert (ours["open squares"] == 2 * env.num_cells + 1).all() and (theirs["open squares"] == 2 * env.num_cells + 1).all()
    assert abs(ours["shortest path"].mean() - theirs["shortest path"].mean()) < 0.1 * theirs["shortest path"].mean()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["popgym-labyrinth-escape-easy", "popgym-labyrinth-explore-hard"])
def test_steps_on_cuda_without_host_syncs(name):
    env = make(name, num_envs=256, seed=0, device="cuda")
    obs, _ = env.reset()
    succeeded = torch.zeros(256, dtype=torch.bool, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2 * env.num_squares):
            obs, reward, terminated, truncated, info = env.step(env.memoryless_action(obs))
            succeeded |= info["success"]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert succeeded.all()

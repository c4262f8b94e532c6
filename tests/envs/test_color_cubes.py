"""Color-Cubes rules: layout, watch phase, teleports while acting (the published dynamics) or while
watching (memrl's earlier variant), map updates, rewards, and what memory needs."""

from __future__ import annotations

import math

import pytest
import torch

from envs.color_cubes import ColorCubes
from envs.registry import make_env

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ObservationLayout:
    """Slices of a ColorCubes observation (see the class docstring)."""

    def __init__(self, env: ColorCubes):
        size, cubes = env.grid_size, env.num_cubes
        self.size, self.cubes, self.interior = size, cubes, env.num_interior
        self.flags = 2 * size + cubes

    def agent(self, obs):
        return obs[:, : self.size].argmax(1), obs[:, self.size : 2 * self.size].argmax(1)

    def target(self, obs):
        return obs[:, 2 * self.size : self.flags].argmax(1)

    def acting(self, obs):
        return obs[:, self.flags] == 1.0

    def map_shown(self, obs):
        return obs[:, self.flags + 1] == 1.0

    def cells(self, obs):
        """Per interior cell [occupied, colour one-hot], [N, I, 1 + cubes]."""
        return obs[:, self.flags + 2 :].view(-1, self.interior, 1 + self.cubes)


def interior_slot(env: ColorCubes, cell: torch.Tensor) -> torch.Tensor:
    return env.slot_of_cell[cell]


def assert_near(rate: float, expected: float, trials: int):
    margin = 4 * math.sqrt(expected * (1 - expected) / trials)
    assert abs(rate - expected) <= margin, f"rate {rate:.4f}, expected {expected:.4f} +- {margin:.4f}"


def test_layout_is_valid_and_uniform():
    env = ColorCubes(4000, seed=0, grid_size=5, num_cubes=4, watch_steps=8, teleport_prob=0.5, teleport_phase="watch")
    env.reset()
    size = env.grid_size
    for _ in range(8):
        cube_x, cube_y = env.cube_cell % size, env.cube_cell // size
        assert bool(((cube_x >= 1) & (cube_x <= size - 2) & (cube_y >= 1) & (cube_y <= size - 2)).all())
        ordered = env.cube_cell.sort(1).values
        assert bool((ordered[:, 1:] != ordered[:, :-1]).all()), "cubes share a cell"
        assert not bool((env.cube_cell == env._agent_cell()[:, None]).any()), "a cube sits on the agent"
        env.step(torch.zeros(4000, dtype=torch.int64))
    env.reset(seed=1)
    assert_near((env.target == 0).float().mean().item(), 1 / 4, 4000)
    assert_near((env._agent_cell() == 0).float().mean().item(), 1 / 25, 4000)
    # With the agent on the border, each colour is uniform over the 9 interior cells (colour 0 on the centre here).
    agent_x, agent_y = env.agent_x, env.agent_y
    on_border = (agent_x == 0) | (agent_x == size - 1) | (agent_y == 0) | (agent_y == size - 1)
    on_centre = (env.cube_cell[:, 0] == 2 * size + 2)[on_border]
    assert_near(on_centre.float().mean().item(), 1 / 9, on_centre.numel())


def test_watch_phase_ignores_actions_then_the_agent_moves_and_walls_block():
    env = ColorCubes(1, seed=0, grid_size=5, num_cubes=2, watch_steps=3)
    layout = ObservationLayout(env)
    obs, _ = env.reset()
    env.agent_x.fill_(0)
    env.agent_y.fill_(0)
    env.cube_cell.copy_(torch.tensor([[1 * 5 + 1, 3 * 5 + 3]]))
    for _ in range(3):
        assert not bool(layout.acting(env._observe()))
        env.step(torch.tensor([RIGHT]))
        assert (env.agent_x.item(), env.agent_y.item()) == (0, 0)
    assert bool(layout.acting(env._observe()))
    for action, position in [(UP, (0, 0)), (LEFT, (0, 0)), (RIGHT, (1, 0)), (RIGHT, (2, 0)), (DOWN, (2, 1))]:
        obs, reward, terminated, _, _ = env.step(torch.tensor([action]))
        assert (env.agent_x.item(), env.agent_y.item()) == position and not bool(terminated)
        assert tuple(t.item() for t in layout.agent(obs)) == position and reward.item() == 0.0
        assert not bool(layout.map_shown(obs)) and not bool(layout.cells(obs).any())


@pytest.mark.parametrize("target, expected_success", [(0, True), (1, False)])
def test_stepping_onto_a_cube_ends_the_episode(target, expected_success):
    env = ColorCubes(1, seed=0, grid_size=5, num_cubes=2, watch_steps=1)
    env.reset()
    env.step(torch.tensor([UP]))  # the watch step
    env.agent_x.fill_(1)
    env.agent_y.fill_(0)
    env.cube_cell.copy_(torch.tensor([[1 * 5 + 1, 3 * 5 + 3]]))
    env.target.fill_(target)
    _, reward, terminated, truncated, info = env.step(torch.tensor([DOWN]))
    assert bool(terminated) and not bool(truncated)
    assert reward.item() == float(expected_success) and bool(info["success"]) == expected_success


def test_time_limit_is_watch_steps_plus_four_grid_sizes():
    env = ColorCubes(2, seed=0, grid_size=5, num_cubes=3, watch_steps=2)
    assert env.max_episode_steps == 2 + 20
    env.reset()
    env.agent_x.fill_(0)  # on the border, walking into the left wall forever
    for step in range(1, 23):
        _, _, terminated, truncated, _ = env.step(torch.full((2,), LEFT))
        assert not bool(terminated.any()) and bool(truncated.all()) == (step == 22)


def test_first_map_shows_every_cube_with_its_colour():
    env = ColorCubes(256, seed=3, grid_size=5, num_cubes=3, watch_steps=1)
    layout = ObservationLayout(env)
    obs, _ = env.reset()
    cells = layout.cells(obs)
    slots = interior_slot(env, env.cube_cell)
    rows = torch.arange(256)[:, None]
    assert bool(layout.map_shown(obs).all())
    assert bool((cells[:, :, 0].sum(1) == 3).all()) and bool((cells[rows, slots, 0] == 1).all())
    assert bool((cells[rows, slots, 1 + torch.arange(3)] == 1).all()), "cube k carries colour k"
    assert torch.equal(layout.target(obs), env.target)
    agent_x, agent_y = layout.agent(obs)
    assert torch.equal(agent_x, env.agent_x) and torch.equal(agent_y, env.agent_y)
    obs, _, _, _, _ = env.step(torch.zeros(256, dtype=torch.int64))
    assert not bool(layout.map_shown(obs).any()) and not bool(layout.cells(obs).any())
    assert torch.equal(layout.target(obs), env.target), "the target colour stays visible"


@pytest.mark.parametrize("hide_colours", [False, True])
def test_watch_variant_teleports_one_non_target_cube_during_the_watch_phase_and_shows_an_update(hide_colours):
    watch = 6
    env = ColorCubes(2000, seed=5, grid_size=5, num_cubes=4, watch_steps=watch, teleport_prob=0.5,
                     hide_colours_on_update=hide_colours, teleport_phase="watch")
    layout = ObservationLayout(env)
    obs, _ = env.reset()
    teleports = 0
    for step in range(watch):
        before = env.cube_cell.clone()
        obs, _, terminated, _, _ = env.step(torch.zeros(2000, dtype=torch.int64))
        assert not bool(terminated.any()), "nobody moves during the watch phase"
        moved = env.cube_cell != before
        rows = torch.arange(2000)
        assert not bool(moved[rows, env.target].any()), "the target cube never moves"
        assert bool((moved.sum(1) <= 1).all())
        assert torch.equal(layout.map_shown(obs), moved.any(1)), "an update is shown exactly after a teleport"
        if step == watch - 1:
            assert not bool(moved.any()), "the observation the agent first acts on is never an update"
            continue
        assert_near(moved.any(1).float().mean().item(), 0.5, 2000)
        teleports += int(moved.any(1).sum())
        cells = layout.cells(obs)[moved.any(1)]
        occupied = torch.zeros_like(cells[:, :, 0]).scatter_(1, interior_slot(env, env.cube_cell[moved.any(1)]), 1.0)
        assert torch.equal(cells[:, :, 0], occupied), "updates show every cube's current cell"
        assert bool(cells[:, :, 1:].any(2).sum(1).eq(0 if hide_colours else 4).all())
    assert teleports > 0


def observation_memory_policy(env: ColorCubes, keep_updates: bool = True):
    """A policy that sees only observations and remembers: the target colour (from the first
    observation), the target's cell and the occupied cells from the last map (or from the first map
    only, when `keep_updates` is False). A map with colours names the target's cell; after a
    colour-hidden update (one cube moved) the cube that left the remembered target cell is the one
    that appeared on a new cell. It plans with a scratch env holding that remembered map: the
    task is solvable from what is shown."""
    layout = ObservationLayout(env)
    scratch = ColorCubes(env.num_envs, grid_size=env.grid_size, num_cubes=env.num_cubes, watch_steps=1)
    rows = torch.arange(env.num_envs)
    target_slot = torch.zeros(env.num_envs, dtype=torch.int64)
    target = torch.zeros(env.num_envs, dtype=torch.int64)
    occupied = torch.zeros(env.num_envs, env.num_interior, dtype=torch.bool)

    def policy(obs, is_first):
        cells = layout.cells(obs)
        shown = layout.map_shown(obs) & (is_first | keep_updates)
        colours_shown = cells[:, :, 1:].any(2).any(1)
        target.copy_(torch.where(is_first, layout.target(obs), target))
        target_here = cells[:, :, 1:].gather(2, target[:, None, None].expand(-1, env.num_interior, 1)).squeeze(2)
        now_occupied = cells[:, :, 0] == 1
        appeared = (now_occupied & ~occupied).float().argmax(1)
        target_left = ~now_occupied[rows, target_slot]
        followed = torch.where(target_left, appeared, target_slot)
        target_slot.copy_(torch.where(shown, torch.where(colours_shown, target_here.argmax(1), followed), target_slot))
        occupied.copy_(torch.where(shown[:, None], now_occupied, occupied))
        others = occupied.clone()
        others[rows, target_slot] = False
        other_slots = others.float().topk(env.num_cubes - 1, dim=1).indices
        scratch.cube_cell = env.interior_cells[torch.cat([target_slot[:, None], other_slots], 1)]
        scratch.target = torch.zeros(env.num_envs, dtype=torch.int64)
        scratch.agent_x, scratch.agent_y = layout.agent(obs)
        scratch.elapsed_steps = layout.acting(obs).long()
        return scratch.oracle_action()

    return policy


def first_episode_success_rate(env, choose_action) -> float:
    obs, info = env.reset()
    is_first = info["is_first"]
    finished = torch.zeros(env.num_envs, dtype=torch.bool)
    success = torch.zeros(env.num_envs, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        obs, _, _, _, info = env.step(choose_action(obs, is_first))
        is_first = info["is_first"]
        success |= info["episode_done"] & ~finished & info["success"]
        finished |= info["episode_done"]
    assert bool(finished.all())
    return success.float().mean().item()


ALL_LEVELS = ["color-cubes-trivial", "color-cubes-medium", "color-cubes-extreme", "color-cubes-watch-medium",
              "color-cubes-watch-extreme"]


@pytest.mark.parametrize("name", ALL_LEVELS)
def test_every_level_is_solvable_from_observations_with_memory(name):
    env = make_env(name, num_envs=1000, seed=6)
    assert first_episode_success_rate(env, observation_memory_policy(env)) == 1.0


@pytest.mark.parametrize("name", ["color-cubes-medium", "color-cubes-extreme", "color-cubes-watch-medium"])
def test_a_policy_that_keeps_only_the_first_map_fails(name):
    env = make_env(name, num_envs=2000, seed=7)
    stale_map_rate = first_episode_success_rate(env, observation_memory_policy(env, keep_updates=False))
    assert stale_map_rate < 0.8, f"a policy that ignores updates still succeeds {stale_map_rate:.3f}"


@pytest.mark.parametrize("hide_colours", [False, True])
def test_cubes_move_while_the_agent_walks_and_each_move_is_shown(hide_colours):
    """Act-phase teleports: after the watch step, one cube (any colour, the target too) moves with
    probability 1/2 per step, never onto the agent, and exactly those steps show the map; the target
    colour is shown in the first observation only."""
    envs = 3000
    env = ColorCubes(envs, seed=9, grid_size=7, num_cubes=4, watch_steps=1, teleport_prob=0.5,
                     hide_colours_on_update=hide_colours)
    layout = ObservationLayout(env)
    obs, _ = env.reset()
    assert bool(layout.map_shown(obs).all()) and torch.equal(layout.target(obs), env.target)
    assert bool((obs[:, 2 * 7 : layout.flags].sum(1) == 1).all())
    obs, _, _, _, _ = env.step(env.memoryless_action(obs))  # the layout-blind ring walk: the agent really moves
    assert not bool(layout.map_shown(obs).any()), "no cube moves during the watch step"
    rows = torch.arange(envs)
    moves, target_moves, steps = 0, 0, 0
    ended = torch.zeros(envs, dtype=torch.bool)  # restarted episodes are in their watch step: left out
    for _ in range(4):
        before, target_before = env.cube_cell.clone(), env.target.clone()
        agent_before = env._agent_cell().clone()
        obs, _, _, _, info = env.step(env.memoryless_action(obs))
        ended |= info["episode_done"]
        alive = ~ended
        moved_anywhere = env.cube_cell != before
        moved = moved_anywhere[alive]
        assert bool((moved.sum(1) <= 1).all()), "at most one cube moves per step"
        assert not bool(env._agent_cell()[alive].eq(agent_before[alive]).all()), "the agent walks meanwhile"
        assert not bool((env.cube_cell == env._agent_cell()[:, None]).any()), "no cube lands on the agent"
        assert torch.equal(layout.map_shown(obs)[alive], moved.any(1))
        assert not bool(obs[alive, 2 * 7 : layout.flags].any()), "the target colour is not shown again"
        shown = layout.map_shown(obs) & alive
        colours = layout.cells(obs)[shown][:, :, 1:].any(2).sum(1)
        assert bool((colours == (0 if hide_colours else 4)).all())
        moves += int(moved.any(1).sum())
        target_moves += int(moved_anywhere[rows, target_before][alive].sum())
        steps += int(alive.sum())
    assert_near(moves / steps, 0.5, steps)
    assert_near(target_moves / moves, 1 / 4, moves)


@pytest.mark.parametrize("name", ALL_LEVELS)
def test_memoryless_policy_reaches_chance(name):
    env = make_env(name, num_envs=4000, seed=8)
    rate = first_episode_success_rate(env, lambda obs, is_first: env.memoryless_action(obs))
    assert_near(rate, env.chance_success, 4000)


def test_levels():
    trivial, medium, extreme = (make_env(f"color-cubes-{level}", num_envs=1) for level in ("trivial", "medium", "extreme"))
    assert (trivial.num_cubes, trivial.chance_success, trivial.teleports) == (3, 1 / 3, False)
    assert (medium.num_cubes, medium.teleports, medium.teleport_while_acting, medium.hide_colours_on_update) == (4, True, True, False)
    assert (extreme.num_cubes, extreme.teleports, extreme.teleport_while_acting, extreme.hide_colours_on_update) == (4, True, True, True)
    watch = make_env("color-cubes-watch-medium", num_envs=1)
    assert (watch.teleports, watch.teleport_while_acting, watch.watch_steps) == (True, False, 8)
    assert make_env("color-cubes", num_envs=1).num_cubes == 3


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_cubes": 5}, "num_cubes"),
        ({"num_cubes": 1}, "num_cubes"),
        ({"grid_size": 3, "num_cubes": 2}, "grid_size"),
        ({"watch_steps": 0}, "watch_steps"),
        ({"teleport_prob": 1.5}, "teleport_prob"),
        ({"teleport_phase": "never"}, "teleport_phase"),
        ({"map_every_step": 1}, "map_every_step"),
        ({"hide_updates": True, "map_every_step": True}, "hide_updates"),
    ],
)
def test_rejects_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ColorCubes(1, **kwargs)


@pytest.mark.parametrize("teleport_prob", [0.0, 0.5])
def test_map_every_step_shows_the_live_map_on_every_step(teleport_prob):
    """The fully observable variant: every observation holds the current map with its colours; the target
    colour follows the level's rule (throughout without teleports, first observation only with them)."""
    env = ColorCubes(64, seed=5, grid_size=7, num_cubes=4, teleport_prob=teleport_prob, map_every_step=True)
    layout = ObservationLayout(env)
    obs, _ = env.reset()
    rows = torch.arange(64)[:, None]
    for step in range(12):
        cells = layout.cells(obs)
        slots = interior_slot(env, env.cube_cell)
        assert bool(layout.map_shown(obs).all()), step
        assert bool((cells[:, :, 0].sum(1) == 4).all()) and bool((cells[rows, slots, 1 + torch.arange(4)] == 1).all())
        target_visible = obs[:, 2 * 7 : 2 * 7 + 4].sum(1) == 1
        assert bool(target_visible.all()) == (step == 0 or teleport_prob == 0.0), step
        obs = env.step(torch.randint(4, (64,), generator=torch.Generator().manual_seed(step)))[0]


@pytest.mark.parametrize("name", ["color-cubes-medium", "color-cubes-watch-medium"])
def test_hide_updates_keeps_the_moves_and_shows_only_the_first_map(name):
    """The ablation changes what is seen, never what happens: same seed and actions, same cubes, rewards and
    ends; every map after an episode's first observation is gone (and nothing else of the observation)."""
    shown, hidden = make_env(name, num_envs=256, seed=9), make_env(name, num_envs=256, seed=9, hide_updates=True)
    layout = ObservationLayout(shown)
    map_start = 2 * shown.grid_size + shown.num_cubes + 1
    obs_shown, info = shown.reset()
    obs_hidden, _ = hidden.reset()
    is_first, updates_seen = info["is_first"], 0
    for step in range(40):
        assert torch.equal(obs_shown[is_first], obs_hidden[is_first]), step
        assert torch.equal(obs_shown[:, :map_start], obs_hidden[:, :map_start]), step
        assert not obs_hidden[~is_first, map_start:].any(), step
        updates_seen += int(layout.map_shown(obs_shown)[~is_first].sum())
        action = torch.randint(4, (256,), generator=torch.Generator().manual_seed(step))
        obs_shown, reward, terminated, truncated, info = shown.step(action)
        obs_hidden, reward_hidden, terminated_hidden, truncated_hidden, _ = hidden.step(action)
        assert torch.equal(shown.cube_cell, hidden.cube_cell) and torch.equal(reward, reward_hidden)
        assert torch.equal(terminated, terminated_hidden) and torch.equal(truncated, truncated_hidden)
        is_first = info["is_first"]
    assert updates_seen > 100, "the env without the ablation shows updates"


def test_a_policy_of_the_live_map_loses_its_edge_when_updates_are_hidden():
    """With updates hidden, the observation-memory policy can only plan on the first map: it falls from 1.00 to the
    first-map policy's rate (0.71 on Medium), the check a trained agent is put to."""
    env = make_env("color-cubes-medium", num_envs=2000, seed=7, hide_updates=True)
    assert first_episode_success_rate(env, observation_memory_policy(env)) < 0.8

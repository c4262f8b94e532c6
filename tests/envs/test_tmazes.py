"""Rules of the passive T-maze and the Endless T-Maze: moves, rewards, cues, lengths, time limits."""

from __future__ import annotations

import math

import pytest
import torch

from envs.endless_tmaze import EndlessTMaze
from envs.registry import ALIASES, make_env, presets
from envs.tmaze import PASSIVE_DOWN, PASSIVE_LEFT, PASSIVE_RIGHT, PASSIVE_UP, PassiveTMaze, TMaze

FORWARD, LEFT, RIGHT = 0, 1, 2


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def act(env, action: int):
    """Step a one-env env -> (obs [obs_dim], reward, terminated, truncated, info of env 0)."""
    obs, reward, terminated, truncated, info = env.step(torch.tensor([action]))
    return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {k: v[0] for k, v in info.items()}


def cue_of(obs) -> int | None:
    """0 = left, 1 = right, None when no cue is shown."""
    if obs[1] == 1.0:
        return 0
    if obs[2] == 1.0:
        return 1
    return None


def first_episode_success_rate(env, policy) -> float:
    obs, _ = env.reset()
    finished = torch.zeros(env.num_envs, dtype=torch.bool)
    success = torch.zeros(env.num_envs, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        obs, _, _, _, info = env.step(policy(env, obs))
        success |= info["episode_done"] & ~finished & info["success"]
        finished |= info["episode_done"]
    assert bool(finished.all())
    return success.float().mean().item()


def assert_near(rate: float, expected: float, trials: int):
    """Within 4 standard deviations of a Binomial(trials, expected) proportion."""
    margin = 4 * math.sqrt(expected * (1 - expected) / trials)
    assert abs(rate - expected) <= margin, f"rate {rate:.4f}, expected {expected:.4f} +- {margin:.4f}"


# -- Endless T-Maze ----------------------------------------------------------------------


def test_endless_tmaze_rules_step_by_step():
    env = EndlessTMaze(1, seed=0, num_corridors=2, corridor_length=3)
    obs, _ = env.reset()
    assert obs.shape == (1, 3) and obs[0, 0] == 0.0 and cue_of(obs[0]) is not None
    first_cue = cue_of(obs[0])
    obs, reward, terminated, truncated, _ = act(env, LEFT + (1 - first_cue))  # a turn in the corridor
    assert (reward, terminated, obs[0].item()) == (pytest.approx(-0.01), False, 0.0)
    for x in (1, 2, 3):
        obs, reward, terminated, _, _ = act(env, FORWARD)
        assert reward == 0.0 and not terminated
        assert obs[0].item() == pytest.approx(x / 3) and cue_of(obs) is None
    obs, reward, terminated, _, info = act(env, LEFT + first_cue)
    assert (reward, terminated) == (1.0, False)
    assert obs[0] == 0.0 and cue_of(obs) is not None, "a correct turn starts the next corridor with a cue"
    second_cue = cue_of(obs)
    for _ in range(3):
        obs, _, _, _, _ = act(env, FORWARD)
    obs, reward, terminated, truncated, info = act(env, LEFT + second_cue)
    assert (reward, terminated, truncated, bool(info["success"])) == (1.0, True, False, True)
    assert info["episode_return"].item() == pytest.approx(2 - 0.01)
    assert info["episode_length"].item() == 9
    assert info["final_obs"][0].item() == 1.0 and cue_of(info["final_obs"]) is None, "the episode ends at the junction"


@pytest.mark.parametrize("junction_action", ["wrong turn", "forward"])
def test_endless_tmaze_any_action_but_the_cued_turn_at_the_junction_fails(junction_action):
    """The authors' junction rule: forward at the junction ends the episode like the wrong turn."""
    env = EndlessTMaze(1, seed=1, num_corridors=3, corridor_length=2)
    obs, _ = env.reset()
    cue = cue_of(obs[0])
    act(env, FORWARD)
    act(env, FORWARD)
    action = RIGHT - cue if junction_action == "wrong turn" else FORWARD
    _, reward, terminated, truncated, info = act(env, action)
    assert (reward, terminated, truncated, bool(info["success"])) == (pytest.approx(-0.01), True, False, False)
    assert info["episode_length"].item() == 3 and info["episode_return"].item() == pytest.approx(-0.01)


def test_endless_tmaze_stalling_keeps_the_cue_in_view_and_costs_the_configured_penalty():
    env = EndlessTMaze(1, seed=2, num_corridors=1, corridor_length=2, penalty=-0.25)
    obs, _ = env.reset()
    cue = cue_of(obs[0])
    for _ in range(3):
        obs, reward, terminated, _, _ = act(env, LEFT)
        assert (reward, terminated, cue_of(obs)) == (-0.25, False, cue), "x = 0 still shows the cue"
    act(env, FORWARD)
    obs, reward, _, _, _ = act(env, RIGHT)
    assert (reward, cue_of(obs), obs[0].item()) == (-0.25, None, 0.5)


def test_endless_tmaze_scripted_walker_passes_n_corridors_of_uniform_lengths():
    """A walker that reads only where it stands (the cue at x = 0) and is told the junction passes all n
    corridors in sum(L_k + 1) steps; one that moves forward once too often fails in the first corridor."""
    corridors = 4
    env = EndlessTMaze(300, seed=5, num_corridors=corridors, corridor_length=6, min_corridor_length=2, length_mode="uniform")
    obs, _ = env.reset()
    cue = torch.zeros(300, dtype=torch.int64)
    steps_in_corridors = torch.zeros(300, dtype=torch.int64)
    finished = torch.zeros(300, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        cue = torch.where(obs[:, 0] == 0, obs[:, 2].long(), cue)
        steps_in_corridors += ~finished * torch.where(env.position == 0, env.length + 1, 0)
        action = torch.where(env.position == env.length, cue + 1, FORWARD)
        obs, _, terminated, _, info = env.step(action)
        newly = info["episode_done"] & ~finished
        assert bool((info["success"][newly]).all()) and torch.equal(info["episode_length"][newly], steps_in_corridors[newly])
        assert torch.allclose(info["episode_return"][newly], torch.full((int(newly.sum()),), float(corridors)))
        finished |= info["episode_done"]
    assert bool(finished.all())
    overshoot = EndlessTMaze(300, seed=6, num_corridors=corridors, corridor_length=6, min_corridor_length=2, length_mode="uniform")
    overshoot.reset()
    first_length = overshoot.length.clone()
    ended = torch.zeros(300, dtype=torch.bool)
    for _ in range(7):
        _, reward, terminated, _, info = overshoot.step(torch.full((300,), FORWARD))
        newly = info["episode_done"] & ~ended
        assert bool(terminated[newly].all()) and not bool(info["success"][newly].any())
        assert torch.equal(info["episode_length"][newly], first_length[newly] + 1) and bool((reward[newly] == -0.01).all())
        ended |= newly
    assert bool(ended.all())


def test_endless_tmaze_truncates_at_six_times_length_plus_one_times_corridors():
    env = EndlessTMaze(3, seed=0, num_corridors=2, corridor_length=4)
    assert env.max_episode_steps == 6 * 5 * 2
    env.reset()
    stall = torch.full((3,), LEFT)  # turning in the corridor never moves nor ends the episode
    for step in range(1, env.max_episode_steps + 1):
        _, reward, terminated, truncated, info = env.step(stall)
        assert not bool(terminated.any())
        assert bool(truncated.all()) == (step == env.max_episode_steps)
    assert torch.equal(info["episode_length"], torch.full((3,), 60))
    torch.testing.assert_close(info["episode_return"], torch.full((3,), -0.6))


def test_endless_tmaze_uniform_lengths_are_redrawn_per_corridor():
    env = EndlessTMaze(500, seed=0, num_corridors=5, corridor_length=4, min_corridor_length=2, length_mode="uniform")
    env.reset()
    lengths = [env.length.clone()]
    changed_within_episode = torch.zeros(500, dtype=torch.bool)
    for _ in range(4 * 5):  # the oracle passes a corridor of length L <= 4 in L + 1 steps
        previous = env.length.clone()
        at_junction = env.position == env.length
        env.step(env.oracle_action())
        new_corridor = at_junction & (env.corridors_passed > 0)
        lengths.append(env.length[new_corridor])
        changed_within_episode |= new_corridor & (env.length != previous)
    drawn = torch.cat(lengths)
    counts = torch.bincount(drawn, minlength=5)
    assert counts[:2].sum() == 0, "no corridor is shorter than min_corridor_length"
    for length in (2, 3, 4):
        assert_near(counts[length].item() / drawn.numel(), 1 / 3, drawn.numel())
    assert changed_within_episode.float().mean() > 0.5


def test_endless_tmaze_fixed_lengths_never_change():
    env = EndlessTMaze(64, seed=0, num_corridors=3, corridor_length=5)
    env.reset()
    for _ in range(40):
        env.step(env.oracle_action())
        assert bool((env.length == 5).all())


def test_endless_tmaze_cue_must_be_rewritten():
    """Each corridor's cue is fresh: remembering only the first cue passes n corridors with
    probability (1/2)^(n-1), remembering the latest one always passes."""
    corridors = 3
    env = EndlessTMaze(2000, seed=0, num_corridors=corridors, corridor_length=3)
    first_cue = torch.zeros(2000, dtype=torch.int64)

    def first_cue_policy(env, obs):
        first_cue.copy_(torch.where(env.elapsed_steps == 0, obs[:, 2].long(), first_cue))
        return torch.where(obs[:, 0] == 1.0, first_cue + 1, FORWARD)

    assert_near(first_episode_success_rate(env, first_cue_policy), 0.5 ** (corridors - 1), 2000)
    assert first_episode_success_rate(env, lambda env, obs: env.oracle_action()) == 1.0


@pytest.mark.parametrize("mode", ["fixed", "uniform"])
@pytest.mark.parametrize("corridors", [1, 3])
def test_endless_tmaze_memoryless_policy_success_follows_from_the_rules(mode, corridors):
    """Fixed lengths: the memoryless policy reaches chance (1/2)^n. Uniform lengths (L_max 5, L_min 1):
    it passes a corridor with (1 + 1/5) / 4 = 0.3, since forward at an unseen junction fails."""
    env = EndlessTMaze(4000, seed=2, num_corridors=corridors, corridor_length=5, length_mode=mode)
    rate = first_episode_success_rate(env, lambda env, obs: env.memoryless_action(obs))
    assert env.chance_success == 0.5**corridors
    per_corridor = 0.5 if mode == "fixed" else 0.3
    assert_near(rate, per_corridor**corridors, 4000)


def test_endless_tmaze_presets_cover_the_published_grid():
    names = [name for name in presets() if name.startswith("endless-tmaze-")]
    assert len(names) == 16
    for mode in ("fixed", "uniform"):
        for length in (5, 10):
            for corridors in (1, 3, 5, 10):
                env = make_env(f"endless-tmaze-{mode}-l{length}-n{corridors}", num_envs=1)
                assert (env.max_length, env.num_corridors, env.uniform_lengths) == (length, corridors, mode == "uniform")
                assert env.min_length == 1
                assert env.max_episode_steps == 6 * (length + 1) * corridors
                assert env.chance_success == 0.5**corridors
    assert ALIASES["memory-rewrite"] == "endless-tmaze-fixed-l5-n3"
    assert presets()["endless-tmaze"] == presets()["endless-tmaze-fixed-l5-n3"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_corridors": 0}, "num_corridors"),
        ({"corridor_length": 0}, "corridor_length"),
        ({"min_corridor_length": 6}, "min_corridor_length"),
        ({"length_mode": "random"}, "length_mode"),
    ],
)
def test_endless_tmaze_rejects_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        EndlessTMaze(1, **kwargs)


# -- passive T-maze ----------------------------------------------------------------------


def test_tmaze_cue_only_in_first_observation_and_junction_flag_only_at_the_end():
    env = TMaze(1, seed=0, corridor_length=4)
    obs, _ = env.reset()
    assert obs.shape == (1, 4)
    cue = cue_of(obs[0])
    assert cue is not None and obs[0, 3] == 0.0
    obs, reward, terminated, _, _ = act(env, LEFT)  # stalling at x = 0 does not bring the cue back
    assert cue_of(obs) is None and reward == pytest.approx(-0.01) and not terminated
    for x in range(1, 5):
        obs, reward, _, _, _ = act(env, FORWARD)
        assert reward == 0.0 and cue_of(obs) is None
        assert obs[0].item() == pytest.approx(x / 4) and obs[3].item() == float(x == 4)
    obs, reward, terminated, _, _ = act(env, FORWARD)
    assert (reward, terminated, obs[3].item()) == (pytest.approx(-0.01), False, 1.0)
    obs, reward, terminated, truncated, info = act(env, LEFT + cue)
    assert (reward, terminated, truncated, bool(info["success"])) == (1.0, True, False, True)
    assert cue_of(info["final_obs"]) is None
    assert cue_of(obs) is not None and obs[0] == 0.0, "the next episode starts with its cue"


def test_tmaze_wrong_turn_terminates_without_success():
    env = TMaze(1, seed=3, corridor_length=1)
    obs, _ = env.reset()
    act(env, FORWARD)
    _, reward, terminated, _, info = act(env, RIGHT - cue_of(obs[0]))
    assert (reward, terminated, bool(info["success"])) == (pytest.approx(-0.01), True, False)


def test_tmaze_truncates_at_four_times_length_plus_one():
    env = TMaze(2, seed=0, corridor_length=7)
    assert env.max_episode_steps == 32
    env.reset()
    for step in range(1, 33):
        _, _, terminated, truncated, _ = env.step(torch.full((2,), FORWARD))
        assert not bool(terminated.any()) and bool(truncated.all()) == (step == 32)


@pytest.mark.parametrize("length", [1, 10, 100])
def test_tmaze_oracle_and_memoryless_success(length):
    env = TMaze(2000, seed=4, corridor_length=length)
    assert first_episode_success_rate(env, lambda env, obs: env.oracle_action()) == 1.0
    assert_near(first_episode_success_rate(env, lambda env, obs: env.memoryless_action(obs)), 0.5, 2000)


def test_tmaze_presets():
    lengths = {name: make_env(name, num_envs=1).corridor_length for name in ("tmaze", "tmaze-easy", "tmaze-medium", "tmaze-hard")}
    assert lengths == {"tmaze": 10, "tmaze-easy": 10, "tmaze-medium": 100, "tmaze-hard": 1000}
    assert ALIASES["memory-retention"] == "tmaze-passive-l100"


def test_tmaze_rejects_bad_length():
    with pytest.raises(ValueError, match="corridor_length"):
        TMaze(1, corridor_length=0)


# -- passive T-maze of Ni et al. 2023 ------------------------------------------------------


def test_passive_tmaze_oracle_walk_step_by_step():
    env = PassiveTMaze(1, seed=0, corridor_length=3)
    obs, _ = env.reset()
    goal = int(obs[0, 1])
    assert goal in (-1, 1) and obs[0, 0] == 0.0
    for step in range(3):
        obs, reward, terminated, truncated, _ = act(env, PASSIVE_RIGHT)
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert obs.tolist() == ([1.0, 0.0] if step == 2 else [0.0, 0.0]), "the goal shows in the first observation only"
    obs, reward, terminated, truncated, info = act(env, PASSIVE_UP if goal == 1 else PASSIVE_DOWN)
    assert (reward, terminated, truncated, bool(info["success"])) == (1.0, True, False, True)
    assert info["final_obs"].tolist() == [1.0, float(goal)] and info["episode_length"].item() == 4
    assert obs[0] == 0.0 and obs[1] != 0.0, "the next episode starts with its goal shown"


def test_passive_tmaze_lagging_costs_one_over_length_per_step_and_blocked_moves_do_nothing():
    length = 4
    env = PassiveTMaze(1, seed=1, corridor_length=length)
    env.reset()
    rewards = []
    for action in (PASSIVE_LEFT, PASSIVE_UP, PASSIVE_DOWN, PASSIVE_RIGHT):  # three blocked moves at x = 0, then right
        obs, reward, terminated, _, _ = act(env, action)
        rewards.append(reward)
        assert not terminated and obs.tolist() == [0.0, 0.0], "x = 0 after the first step hides the goal"
    assert (env.x.item(), env.y.item()) == (1, 0)
    _, reward, terminated, truncated, info = act(env, PASSIVE_RIGHT)  # the (L + 1)-th step ends the episode anyway
    assert (reward, terminated, truncated, bool(info["success"])) == (0.0, True, False, False)
    assert rewards == [pytest.approx(-1 / length)] * length
    assert info["episode_return"].item() == pytest.approx(-1.0)


def test_passive_tmaze_goal_cells_are_reachable_only_from_the_junction():
    env = PassiveTMaze(1, seed=2, corridor_length=2, penalty=-0.5)
    env.reset()
    act(env, PASSIVE_RIGHT)
    obs, *_ = act(env, PASSIVE_RIGHT)
    assert obs.tolist() == [1.0, 0.0]
    env.elapsed_steps.fill_(0)  # replay the junction's moves without the horizon ending the episode
    for action, cell in [(PASSIVE_UP, (2, 1)), (PASSIVE_RIGHT, (2, 1)), (PASSIVE_UP, (2, 1)), (PASSIVE_DOWN, (2, 0)),
                         (PASSIVE_DOWN, (2, -1)), (PASSIVE_LEFT, (2, -1))]:
        env.step(torch.tensor([action]))
        env.elapsed_steps.fill_(0)
        assert (env.x.item(), env.y.item()) == cell
        assert env._observe()[0].tolist() == [1.0, float(cell[1])]


def test_passive_tmaze_every_episode_lasts_exactly_length_plus_one_steps():
    env = PassiveTMaze(64, seed=3, corridor_length=5)
    assert env.max_episode_steps == 6
    env.reset()
    generator = torch.Generator().manual_seed(0)
    for step in range(1, 19):
        _, _, terminated, truncated, info = env.step(torch.randint(4, (64,), generator=generator))
        assert bool(terminated.all()) == bool(terminated.any()) == (step % 6 == 0) and not bool(truncated.any())
        assert torch.equal(info["episode_length"], torch.full((64,), 6 if step % 6 == 0 else 0))


def test_passive_tmaze_presets_and_memory_retention():
    lengths = {name: kwargs["corridor_length"] for name, (task, kwargs) in presets().items() if task is PassiveTMaze}
    assert {f"tmaze-passive-l{length}" for length in (10, 30, 50, 100, 300, 500, 1000, 1500)} <= set(lengths)
    retention = make_env("memory-retention", num_envs=1)
    assert isinstance(retention, PassiveTMaze) and retention.corridor_length >= 100
    assert retention.penalty == pytest.approx(-1 / retention.corridor_length)

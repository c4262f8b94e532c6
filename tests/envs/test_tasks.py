"""The contract every native task meets, checked for every short name in the registry.

Names that only repeat another preset (the bare task names and the two study aliases) run
the cheap interface checks; the statistical checks run once per distinct preset.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the gymnasium ids)
from envs.registry import ALIASES, env_names, gymnasium_id, make_env, presets

ALL_NAMES = env_names()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These envs step small tensors; two threads on a shared 2-core runner only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _distinct_names() -> list[str]:
    """One name per distinct (task, kwargs), preferring a preset name over an alias."""
    seen, names = set(), []
    for name in sorted(ALL_NAMES, key=lambda name: (name in ALIASES, name)):
        task_class, kwargs = presets()[name]
        key = (task_class, tuple(sorted(kwargs.items())))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return sorted(names)


DISTINCT_NAMES = _distinct_names()

TAIL_PROBABILITY = 1e-4
"""The memoryless test fails only if a policy at exactly chance would do better with this probability."""


def binomial_upper_quantile(trials: int, probability: float, tail: float = TAIL_PROBABILITY) -> int:
    """Smallest k with P(Binomial(trials, probability) > k) <= tail."""
    if probability <= 0.0:
        return 0
    if probability >= 1.0:
        return trials
    log_p, log_q = math.log(probability), math.log1p(-probability)
    cumulative = 0.0
    for k in range(trials + 1):
        log_pmf = math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1) + k * log_p + (trials - k) * log_q
        cumulative += math.exp(log_pmf)
        if 1.0 - cumulative <= tail:
            return k
    return trials


def episodes_for(max_episode_steps: int) -> int:
    """Enough first episodes for tight statistics, fewer where episodes are long (keeps CI fast)."""
    return 2000 if max_episode_steps <= 100 else 400


def first_episode_successes(name: str, policy: str, num_envs: int, seed: int = 0) -> torch.Tensor:
    """Run `num_envs` envs until each finished one episode -> success of that episode, bool [num_envs]."""
    env = make_env(name, num_envs=num_envs, seed=seed)
    obs, _ = env.reset()
    finished = torch.zeros(num_envs, dtype=torch.bool)
    success = torch.zeros(num_envs, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        action = env.oracle_action() if policy == "oracle" else env.memoryless_action(obs)
        obs, _, _, _, info = env.step(action)
        first_end = info["episode_done"] & ~finished
        success |= first_end & info["success"]
        finished |= info["episode_done"]
        if bool(finished.all()):
            break
    assert bool(finished.all()), f"{name}: some episode outlived max_episode_steps"
    return success


def max_steps(name: str) -> int:
    task_class, kwargs = presets()[name]
    return task_class(num_envs=1, seed=0, **kwargs).max_episode_steps


@pytest.mark.parametrize("name", DISTINCT_NAMES)
def test_oracle_succeeds(name):
    episodes = episodes_for(max_steps(name))
    success_rate = first_episode_successes(name, "oracle", episodes).float().mean().item()
    assert success_rate >= 0.99, f"{name}: oracle success {success_rate:.3f} over {episodes} episodes"


@pytest.mark.parametrize("name", DISTINCT_NAMES)
def test_memoryless_policy_does_not_beat_chance(name):
    episodes = episodes_for(max_steps(name))
    chance = make_env(name, num_envs=1, seed=0).chance_success
    successes = int(first_episode_successes(name, "memoryless", episodes, seed=1).sum())
    allowed = binomial_upper_quantile(episodes, chance)
    assert successes <= allowed, (
        f"{name}: memoryless policy succeeded {successes}/{episodes} times, above chance {chance:.4f} "
        f"(at most {allowed} allowed at tail probability {TAIL_PROBABILITY})"
    )


def random_actions(env, steps: int, seed: int) -> torch.Tensor:
    """Uniform actions [steps, N] (continuous tasks: [steps, N, action_dim], reaching a quarter past the bounds)."""
    generator = torch.Generator().manual_seed(seed)
    if env.action_dim is None:
        return torch.randint(env.num_actions, (steps, env.num_envs), generator=generator)
    unit = torch.rand(steps, env.num_envs, env.action_dim, generator=generator)
    middle, half_width = (env.action_high + env.action_low) / 2, (env.action_high - env.action_low) / 2
    return middle + (2 * unit - 1) * 1.25 * half_width


def single_action(action: torch.Tensor):
    """One env's batched action as its gymnasium env takes it: an int, or a float32 array."""
    return action.numpy() if action.dtype.is_floating_point else int(action)


def rollout(env, actions: torch.Tensor, seed: int) -> list:
    obs, info = env.reset(seed=seed)
    trajectory = [(obs, info)]
    for action in actions:
        trajectory.append(env.step(action))
    return trajectory


def assert_same(left, right):
    if isinstance(left, torch.Tensor):
        assert torch.equal(left, right)
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_same(left[key], right[key])
    else:
        assert len(left) == len(right)
        for a, b in zip(left, right):
            assert_same(a, b)


@pytest.mark.parametrize("name", DISTINCT_NAMES)
def test_same_seed_gives_identical_trajectories(name):
    env = make_env(name, num_envs=8, seed=3)
    actions = random_actions(env, 60, seed=4)
    first = rollout(env, actions, seed=11)
    assert_same(first, rollout(make_env(name, num_envs=8, seed=99), actions, seed=11))
    assert_same(first, rollout(env, actions, seed=11))
    different = rollout(env, actions, seed=12)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, different)), f"{name}: the seed changes nothing"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_gymnasium_env_matches_batched_env(name):
    batched = make_env(name, num_envs=1)
    single = gymnasium.make(gymnasium_id(name))
    assert single.spec.max_episode_steps == batched.max_episode_steps
    steps = min(200, 3 * batched.max_episode_steps)
    actions = random_actions(batched, steps, seed=5)
    batched_obs, _ = batched.reset(seed=21)
    single_obs, _ = single.reset(seed=21)
    episodes_ended = 0
    for action in actions:
        np.testing.assert_array_equal(single_obs, batched_obs[0].numpy())
        batched_obs, reward, terminated, truncated, info = batched.step(action)
        single_obs, single_reward, single_terminated, single_truncated, single_info = single.step(single_action(action[0]))
        assert single_obs.dtype == np.float32 and single_obs.shape == (batched.obs_dim,)
        assert single_reward == pytest.approx(float(reward[0]))
        assert single_terminated == bool(terminated[0])
        # gymnasium's TimeLimit also flags truncation when an episode terminates on its last allowed step.
        at_limit = info["episode_length"][0] == batched.max_episode_steps
        assert single_truncated == bool(truncated[0]) or (single_terminated and at_limit)
        assert single_info["success"] == bool(info["success"][0])
        if single_terminated or single_truncated:
            np.testing.assert_array_equal(single_obs, info["final_obs"][0].numpy())
            single_obs, _ = single.reset()
            episodes_ended += 1
    assert episodes_ended > 0 or steps < batched.max_episode_steps


@pytest.mark.parametrize("name", ALL_NAMES)
def test_gymnasium_env_checker_passes(name):
    check_env(gymnasium.make(gymnasium_id(name)).unwrapped)


DISCRETE_NAMES = [name for name in DISTINCT_NAMES if presets()[name][0].action_dim is None]
CONTINUOUS_NAMES = [name for name in DISTINCT_NAMES if presets()[name][0].action_dim is not None]


@pytest.mark.parametrize("name", DISCRETE_NAMES)
def test_bad_actions_raise_clear_errors(name):
    env = make_env(name, num_envs=4, seed=0)
    env.reset()
    good = torch.zeros(4, dtype=torch.int64)
    for bad, error, words in [
        (torch.full((4,), env.num_actions), ValueError, "must be in"),
        (torch.full((4,), -1), ValueError, "must be in"),
        (torch.zeros(4, 1, dtype=torch.int64), ValueError, "shape"),
        (torch.zeros(5, dtype=torch.int64), ValueError, "shape"),
        (good.float(), ValueError, "integer"),
        (good.numpy(), TypeError, "torch.Tensor"),
    ]:
        with pytest.raises(error, match=words):
            env.step(bad)
    env.step(good)
    single = gymnasium.make(gymnasium_id(name))
    with pytest.raises(gymnasium.error.ResetNeeded):
        single.unwrapped.step(0)
    single.reset(seed=0)
    for bad in [env.num_actions, -1, 1.5, "left"]:
        with pytest.raises(ValueError, match="must be"):
            single.unwrapped.step(bad)


@pytest.mark.parametrize("name", CONTINUOUS_NAMES)
def test_bad_continuous_actions_raise_clear_errors(name):
    env = make_env(name, num_envs=4, seed=0)
    env.reset()
    good = torch.zeros(4, env.action_dim)
    for bad, error, words in [
        (torch.zeros(4), ValueError, rf"shape \(4, {env.action_dim}\)"),
        (torch.zeros(5, env.action_dim), ValueError, "shape"),
        (good.long(), ValueError, "floating-point"),
        (torch.full((4, env.action_dim), float("nan")), ValueError, "finite numbers .clipped to"),
        (good.numpy(), TypeError, "torch.Tensor"),
    ]:
        with pytest.raises(error, match=words):
            env.step(bad)
    env.step(good)
    single = gymnasium.make(gymnasium_id(name))
    single.reset(seed=0)
    for bad in [0.5, np.zeros(env.action_dim + 1, np.float32), "left", np.array([True] * env.action_dim)]:
        with pytest.raises(ValueError, match="must be an array of"):
            single.unwrapped.step(bad)


@pytest.mark.parametrize("name", CONTINUOUS_NAMES)
def test_continuous_actions_are_clipped_to_the_box(name):
    """An action beyond the bounds acts as the bound itself (gymnasium clips Pendulum's torque)."""
    clipped, beyond = make_env(name, num_envs=2, seed=4), make_env(name, num_envs=2, seed=4)
    clipped.reset()
    beyond.reset()
    bounds = torch.tensor([[clipped.action_low], [clipped.action_high]]).expand(2, clipped.action_dim)
    for _ in range(5):
        assert_same(clipped.step(bounds.clone()), beyond.step(bounds * 7.5))


@pytest.mark.parametrize("name", DISTINCT_NAMES)
def test_auto_reset_reports_finished_episodes(name):
    num_envs = 16
    env = make_env(name, num_envs=num_envs, seed=2)
    obs, info = env.reset()
    assert bool(info["is_first"].all())
    steps = min(env.max_episode_steps + 1, 400)
    actions = random_actions(env, steps, seed=6)
    own_return = torch.zeros(num_envs)
    own_length = torch.zeros(num_envs, dtype=torch.int64)
    episodes_ended = 0
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.dtype == torch.float32 and obs.shape == (num_envs, env.obs_dim)
        assert bool(((obs >= env.obs_low) & (obs <= env.obs_high)).all())
        assert reward.dtype == torch.float32 and terminated.dtype == truncated.dtype == torch.bool
        assert not bool((terminated & truncated).any())
        own_return += reward
        own_length += 1
        done = terminated | truncated
        assert torch.equal(info["is_first"], done) and torch.equal(info["episode_done"], done)
        assert torch.equal(info["final_obs"][~done], obs[~done])
        assert bool((info["success"] <= done).all())
        assert bool((truncated <= (own_length >= env.max_episode_steps)).all())
        assert bool((own_length <= env.max_episode_steps).all())
        torch.testing.assert_close(info["episode_return"], torch.where(done, own_return, 0.0))
        assert torch.equal(info["episode_length"], torch.where(done, own_length, 0))
        own_return[done] = 0.0
        own_length[done] = 0
        episodes_ended += int(done.sum())
    if steps > env.max_episode_steps:
        assert episodes_ended >= num_envs

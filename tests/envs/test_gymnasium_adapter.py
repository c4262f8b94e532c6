"""The gymnasium adapter: any space brought to what memrl agents read, in the [N, ...] layout, and
the `module:EnvId` form; the real POPGym and MiniGrid envs where those packages are installed."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import tests.envs.gymnasium_fakes as fakes
from agents.train import main
from envs.gymnasium_adapter import GymnasiumVectorEnv, is_text

FAKES = "tests.envs.gymnasium_fakes"
needs_popgym = pytest.mark.skipif(importlib.util.find_spec("popgym") is None,
                                  reason="popgym is not installed (pip install -e '.[dev]')")
needs_minigrid = pytest.mark.skipif(importlib.util.find_spec("minigrid") is None,
                                    reason="minigrid is not installed (pip install -e '.[dev]')")


def expected_encoding(space: gymnasium.Space, obs) -> np.ndarray:
    """gymnasium's own flattening of every non-text entry, in the space's entry order."""
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        items = enumerate(space.spaces) if isinstance(space, spaces.Tuple) else space.spaces.items()
        return np.concatenate([spaces.flatten(sub, obs[key]) for key, sub in items if not is_text(sub)])
    return spaces.flatten(space, obs).astype(np.float32)


@pytest.mark.parametrize("observation, dim", [("Tuple", 5), ("Dict", 11), ("Discrete", 4)])
def test_composite_observations_become_flat_rows_per_env(observation, dim):
    env_id = f"memrl-test/{observation}ObsDiscreteAct-v0"
    num_envs, seed = 3, 7
    env = GymnasiumVectorEnv(env_id, num_envs=num_envs, seed=seed)
    assert env.single_observation_space.shape == (dim,) and env.single_observation_space.dtype == np.float32
    # The observations ignore the actions, so one plain env per index, seeded as the vector env seeds it, replays them.
    singles = [gymnasium.make(env_id) for _ in range(num_envs)]
    space = singles[0].observation_space
    expected = [single.reset(seed=seed + index)[0] for index, single in enumerate(singles)]
    obs, _ = env.reset()
    for step in range(2 * fakes.EPISODE_LENGTH + 1):
        assert obs.shape == (num_envs, dim)
        for index in range(num_envs):
            np.testing.assert_array_equal(obs[index].numpy(), expected_encoding(space, expected[index]))
        obs, reward, terminated, truncated, info = env.step(torch.zeros(num_envs, dtype=torch.int64))
        ended = (step + 1) % fakes.EPISODE_LENGTH == 0
        assert bool(terminated.all()) == ended and bool(info["is_first"].all()) == ended
        for index, single in enumerate(singles):
            expected[index], _, done, _, _ = single.step(0)
            if done:
                np.testing.assert_array_equal(info["final_obs"][index].numpy(), expected_encoding(space, expected[index]))
                expected[index], _ = single.reset()
    assert env.single_observation_space.contains(obs[0].numpy())


def test_a_dict_holding_one_cnn_sized_image_stays_an_image():
    env = GymnasiumVectorEnv("memrl-test/ImageDictObsDiscreteAct-v0", num_envs=2, seed=0)
    assert env.single_observation_space.shape == (40, 40, 3) and env.single_observation_space.dtype == np.uint8
    obs, _ = env.reset()
    assert obs.shape == (2, 40, 40, 3) and obs.dtype == torch.uint8


@pytest.mark.parametrize("action, count", [("Discrete", 3), ("MultiDiscrete", 6), ("MultiBinary", 8)])
def test_actions_reach_the_env_in_its_own_space(action, count):
    env = GymnasiumVectorEnv(f"memrl-test/TupleObs{action}Act-v0", num_envs=count, seed=0)
    assert env.single_action_space == spaces.Discrete(count)
    env.reset()
    env.step(torch.arange(count))
    received = [copy.unwrapped.actions[-1] for copy in env.vector_env.envs]
    expected = {
        "Discrete": [-1, 0, 1],  # Discrete(3, start=-1)
        "MultiDiscrete": [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]],
        "MultiBinary": [[(value >> bit) & 1 for bit in (2, 1, 0)] for value in range(8)],
    }[action]
    assert [np.asarray(value).tolist() for value in received] == expected
    with pytest.raises(ValueError, match=rf"actions must be integers in \[0, {count}\)"):
        env.step(torch.full((count,), count))


@pytest.mark.parametrize("env_id, words", [
    ("memrl-test/GraphObsDiscreteAct-v0", "the observation space Graph("),
    ("memrl-test/TupleObsSequenceAct-v0", "the action space Sequence("),
])
def test_unsupported_spaces_are_named(env_id, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        GymnasiumVectorEnv(env_id, num_envs=1)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.train", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("env, message", [
    (f"{FAKES}:memrl-test/GraphObsDiscreteAct-v0", "the observation space Graph("),
    ("no_such_module_here:Thing-v0", "names the module 'no_such_module_here', which cannot be imported"),
    (f"{FAKES}:memrl-test/Missing-v0", "gymnasium id 'memrl-test/Missing-v0' is not registered after importing"),
], ids=["graph-space", "missing-module", "missing-id"])
def test_cli_refuses_in_one_sentence_with_exit_code_2(tmp_path, env, message):
    result = run_cli("--env", env, "--run-dir", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_trains_on_a_composite_env_named_module_colon_id(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--env", f"{FAKES}:memrl-test/DictObsMultiDiscreteAct-v0", "--backbone", "gru", "--preset", "smoke",
                 "--total-steps", "512", "--run-dir", str(run_dir), "--quiet"]) == 0
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 8 and evaluation["length_mean"] == fakes.EPISODE_LENGTH


@needs_popgym
def test_popgym_repeat_previous_reads_one_hot_cards():
    env = GymnasiumVectorEnv("popgym:popgym-RepeatPreviousEasy-v0", num_envs=4, seed=0)
    assert env.single_observation_space.shape == (4,) and env.single_action_space == spaces.Discrete(4)
    obs, _ = env.reset()
    for _ in range(60):
        assert torch.equal(obs.sum(1), torch.ones(4)) and set(obs.unique().tolist()) <= {0.0, 1.0}
        obs, _, _, _, info = env.step(torch.randint(4, (4,)))
    env.close()


@needs_minigrid
def test_minigrid_memory_trains_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--env", "minigrid:MiniGrid-MemoryS7-v0", "--backbone", "gru", "--preset", "smoke",
                 "--run-dir", str(run_dir), "--quiet"]) == 0
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 8 and evaluation["length_mean"] > 0
    env = GymnasiumVectorEnv("minigrid:MiniGrid-MemoryS7-v0", num_envs=2, seed=0)
    assert env.single_observation_space.shape == (4 + 7 * 7 * 3,)  # direction one-hot, then the 7x7x3 view
    env.close()

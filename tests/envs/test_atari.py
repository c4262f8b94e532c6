"""Atari100k envs: the protocol read back from the ALE and the wrappers, life loss, reward clipping,
observations, bad names, and train-agent with each agent on atari100k-pong."""

from __future__ import annotations

import importlib.util
import json

import gymnasium
import numpy as np
import pytest
import torch

from agents.train import main as train_main
from envs.atari import (
    MISSING_DEPENDENCIES,
    AtariVectorEnv,
    LifeLossTermination,
    atari_game,
    games,
    reference_scores,
)

pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(name) for name in ("ale_py", "cv2")),
                                reason=MISSING_DEPENDENCIES)


def wrapper_chain(env: gymnasium.Env) -> list[gymnasium.Wrapper]:
    chain = []
    while isinstance(env, gymnasium.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def find_wrapper(env: gymnasium.Env, wrapper_class: type) -> gymnasium.Wrapper | None:
    return next((wrapper for wrapper in wrapper_chain(env) if isinstance(wrapper, wrapper_class)), None)


def test_protocol_settings_are_read_back_from_the_ale_and_the_wrappers():
    env = AtariVectorEnv("atari100k-pong", num_envs=1, seed=0)
    single = env.vector_env.envs[0]
    ale = single.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.0
    assert ale.getInt("frame_skip") == 1
    assert ale.getInt("max_num_frames_per_episode") == 108_000
    assert env.max_episode_steps == 27_000
    preprocessing = find_wrapper(single, gymnasium.wrappers.AtariPreprocessing)
    assert preprocessing.frame_skip == 4 and preprocessing.noop_max == 30
    assert env.single_action_space == gymnasium.spaces.Discrete(6) == gymnasium.spaces.Discrete(len(ale.getMinimalActionSet()))

    obs, info = env.reset()
    assert obs.shape == (1, 64, 64, 3) and obs.dtype == torch.uint8 and bool(info["is_first"].all())
    assert env.single_observation_space == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    start_frame = ale.getEpisodeFrameNumber()
    assert 1 <= start_frame <= 30  # the no-op start
    for step in range(1, 4):
        obs, reward, *_ = env.step(torch.zeros(1, dtype=torch.long))
        assert ale.getEpisodeFrameNumber() == start_frame + 4 * step
    assert obs.shape == (1, 64, 64, 3) and reward.dtype == torch.float32


def test_the_episode_cap_truncates_the_game_after_that_many_frames():
    env = AtariVectorEnv("atari100k-pong", num_envs=1, seed=0, max_episode_frames=200)
    assert env.max_episode_steps == 50
    env.reset()
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(torch.zeros(1, dtype=torch.long))
        steps += 1
        if bool(info["episode_done"][0]):
            break
    assert bool(truncated[0]) and not bool(terminated[0])
    assert 50 - 30 // 4 <= steps <= 50 and int(info["episode_length"][0]) == steps


def test_grayscale_84_with_a_4_frame_stack_puts_the_newest_frame_last():
    stacked = AtariVectorEnv("atari100k-breakout", num_envs=1, seed=3, screen_size=84, grayscale=True, frame_stack=4)
    single = AtariVectorEnv("atari100k-breakout", num_envs=1, seed=3, screen_size=84, grayscale=True)
    assert stacked.single_observation_space.shape == (84, 84, 4) and single.single_observation_space.shape == (84, 84, 1)
    stack, _ = stacked.reset()
    frame, _ = single.reset()
    assert stack.dtype == torch.uint8 and torch.equal(stack[0], frame[0].expand(84, 84, 4))
    frames = [frame]
    for action in [1, 2, 2, 3, 3, 2]:
        stack, *_ = stacked.step(torch.tensor([action]))
        frame, *_ = single.step(torch.tensor([action]))
        frames.append(frame)
    assert torch.equal(stack[0], torch.cat([past[0] for past in frames[-4:]], dim=-1))
    assert not torch.equal(stack[0, ..., :1], stack[0, ..., 3:])


def test_a_lost_life_ends_training_episodes_but_the_game_goes_on_while_evaluation_plays_whole_games():
    generator = torch.Generator().manual_seed(0)
    training = AtariVectorEnv("atari100k-breakout", num_envs=1, seed=1)
    ale = training.vector_env.envs[0].unwrapped.ale
    training.reset()
    assert ale.lives() == 5
    while True:
        frame_before = ale.getEpisodeFrameNumber()
        _, _, terminated, _, info = training.step(torch.randint(0, 4, (1,), generator=generator))
        if bool(info["episode_done"][0]):
            break
    assert bool(terminated[0]) and bool(info["is_first"][0])
    assert ale.lives() == 4 and ale.getEpisodeFrameNumber() > frame_before  # same game, one life fewer

    evaluation = AtariVectorEnv("atari100k-breakout", num_envs=1, seed=1, evaluation=True)
    assert find_wrapper(evaluation.vector_env.envs[0], LifeLossTermination) is None
    ale = evaluation.vector_env.envs[0].unwrapped.ale
    evaluation.reset()
    while True:
        lives_before = ale.lives()
        _, _, terminated, _, info = evaluation.step(torch.randint(0, 4, (1,), generator=generator))
        if bool(info["episode_done"][0]):
            break
    assert bool(terminated[0]) and lives_before == 1 and ale.lives() == 5  # the game ended; a new one began

    without = AtariVectorEnv("atari100k-breakout", num_envs=1, seed=1, life_loss=False)
    assert find_wrapper(without.vector_env.envs[0], LifeLossTermination) is None


def test_reward_clipping_is_an_option_of_training_envs_only():
    clipped = AtariVectorEnv("atari100k-boxing", num_envs=1, clip_rewards=True)
    transform = find_wrapper(clipped.vector_env.envs[0], gymnasium.wrappers.TransformReward)
    assert [transform.reward(value) for value in (7.0, -2.0, 0.0, 0.5)] == [1.0, -1.0, 0.0, 1.0]
    for env in (AtariVectorEnv("atari100k-boxing", num_envs=1),
                AtariVectorEnv("atari100k-boxing", num_envs=1, clip_rewards=True, evaluation=True)):
        assert find_wrapper(env.vector_env.envs[0], gymnasium.wrappers.TransformReward) is None


def test_the_26_games_and_their_reference_scores():
    assert len(games()) == 26
    assert games()["ms-pacman"] == "MsPacman" and games()["up-n-down"] == "UpNDown"
    import ale_py

    gymnasium.register_envs(ale_py)
    assert all(f"ALE/{name}-v5" in gymnasium.registry for name in games().values())
    assert reference_scores()["pong"]["random"] == -20.7 and reference_scores()["pong"]["human"] == 14.6
    assert reference_scores()["boxing"]["dreamerv3"] == 82.0
    assert set(reference_scores()["pong"]) == {"random", "human", "dreamerv3", "storm", "diamond", "iris", "twm"}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: atari_game("atari100k-pongg"), "unknown Atari100k game 'pongg'"),
        (lambda: AtariVectorEnv("atari100k-pong", 1, colour=True), "unknown Atari100k env option 'colour'"),
        (lambda: AtariVectorEnv("atari100k-pong", 1, frame_stack=0), "frame_stack must be a positive integer"),
        (lambda: AtariVectorEnv("atari100k-pong", 1, vectorization="threads"), "vectorization must be sync or async"),
    ],
    ids=["game", "option", "frame-stack", "vectorization"],
)
def test_bad_names_and_options_are_one_sentence(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)
    if "game" in message:
        assert "pong, private-eye" in str(error.value)


def test_train_agent_refuses_an_unknown_game_in_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--env", "atari100k-pongg", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "unknown Atari100k game 'pongg'" in stderr and "boxing" in stderr and len(stderr.strip().splitlines()) == 1


TINY = {
    "ppo": ["--total-steps", "128", "--num-envs", "4", "--num-steps", "32", "--hidden-dim", "16",
            "--num-minibatches", "2", "--update-epochs", "1"],
    "dreamer": ["--preset", "smoke", "--total-steps", "96", "--prefill", "48"],
}


@pytest.mark.parametrize("agent", ["ppo", "dreamer"])
def test_train_agent_runs_on_atari100k_pong_with_each_agent(tmp_path, agent):
    run_dir = tmp_path / agent
    assert train_main(["--agent", agent, "--backbone", "gru", "--env", "atari100k-pong", *TINY[agent],
                       "--eval-episodes", "1", "--env-options", '{"max_episode_frames": 240}', "--torch-threads", "1",
                       "--run-dir", str(run_dir), "--quiet"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    # PPO's atari100k preset clips rewards; --env-options adds the cap to it rather than replacing it.
    expected_options = {"max_episode_frames": 240, **({"clip_rewards": True} if agent == "ppo" else {})}
    assert config["run"]["env_options"] == expected_options
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 1 and evaluation["length_mean"] <= 60
    assert -21 <= evaluation["return_mean"] <= 21

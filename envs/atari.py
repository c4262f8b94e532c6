"""Atari100k: the 26 Atari games of the 100k benchmark (Kaiser et al. 2020) under its standard
protocol, through ale-py and gymnasium, behind memrl's batched interface.

    env = AtariVectorEnv("atari100k-pong", num_envs=8, seed=1)                         # training
    eval_env = AtariVectorEnv("atari100k-pong", num_envs=100, seed=2, evaluation=True)  # whole games

The protocol, as DreamerV3, STORM, DIAMOND, IRIS and TWM report it:

- the ALE emulator runs at frameskip 1 and gymnasium's `AtariPreprocessing` repeats every action
  for 4 frames, max-pools the last two, and starts every game with 1 to 30 no-ops;
- sticky actions are off (repeat_action_probability 0; ALE v5 defaults to 0.25) and the action set
  is the game's minimal one (6 actions in Pong);
- a game is truncated after 108,000 frames = 27,000 agent steps (`max_episode_frames`);
- observations are [64, 64, 3] uint8 RGB, area-resized; `screen_size=84, grayscale=True,
  frame_stack=4` gives the DQN observations [84, 84, 4] (stacked frames on the channel axis);
- in training envs a lost life ends the episode (terminated: no value is bootstrapped across a
  death) and the next episode goes on with the same game; evaluation envs play whole games;
- rewards are the game's unless `clip_rewards` (their sign, in training envs only; the PPO preset
  `atari100k` sets it, Dreamer's symlog heads do not need it);
- the budget is 100k agent steps (400k frames) of training, then 100 evaluation episodes.

The games, their random and human scores and the published scores of five agents are in
`envs/data/atari100k_scores.csv` (`reference_scores()`). ROMs ship with ale-py >= 0.9; nothing is
downloaded at run time. ale-py and opencv (for the resize) come with memrl's `atari` extra.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import io
import re
from dataclasses import dataclass

import gymnasium
import numpy as np
import torch

from envs.gymnasium_adapter import GymnasiumVectorEnv

ENV_PREFIX = "atari100k-"
FRAME_SKIP = 4
NOOP_MAX = 30
PROTOCOL_EPISODE_FRAMES = 108_000
PROTOCOL_AGENT_STEPS = 100_000
PROTOCOL_EVAL_EPISODES = 100
MISSING_DEPENDENCIES = "Atari100k envs need ale-py and opencv: pip install 'memrl[atari]'"


@functools.cache
def _reference_rows() -> tuple[dict[str, str], ...]:
    text = importlib.resources.files("envs").joinpath("data", "atari100k_scores.csv").read_text()
    return tuple(csv.DictReader(io.StringIO(text)))


def games() -> dict[str, str]:
    """Game short name ('ms-pacman') -> ALE name ('MsPacman'): the 26 games of the benchmark."""
    return {short_name(row["game"]): row["game"] for row in _reference_rows()}


def reference_scores() -> dict[str, dict[str, float]]:
    """Game short name -> {'random': ..., 'human': ..., 'dreamerv3': ..., 'storm': ..., ...}, in the CSV's order."""
    return {short_name(row["game"]): {column: float(value) for column, value in row.items() if column != "game"}
            for row in _reference_rows()}


def short_name(ale_name: str) -> str:
    """'MsPacman' -> 'ms-pacman', 'UpNDown' -> 'up-n-down'."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", ale_name).lower()


def is_atari_name(name: str) -> bool:
    return name.startswith(ENV_PREFIX)


def atari_game(name: str) -> str:
    """'atari100k-pong' -> 'pong'; ValueError in one sentence for a game outside the benchmark."""
    game = name.removeprefix(ENV_PREFIX)
    if not is_atari_name(name) or game not in games():
        raise ValueError(f"unknown Atari100k game {game!r} in env {name!r}; choose atari100k-<game> with game one of: "
                         f"{', '.join(games())}")
    return game


@dataclass(frozen=True)
class AtariOptions:
    """The options of `AtariVectorEnv` (train-agent `--env-options`); the defaults are the protocol."""

    screen_size: int = 64
    """observation height and width"""
    grayscale: bool = False
    """one luminance channel instead of RGB"""
    frame_stack: int = 1
    """last frames stacked on the channel axis"""
    max_episode_frames: int = PROTOCOL_EPISODE_FRAMES
    """emulator frames after which a game is truncated (agent steps x 4)"""
    life_loss: bool = True
    """training envs end the episode when a life is lost"""
    clip_rewards: bool = False
    """training envs give the sign of the reward"""
    vectorization: str = "sync"
    """gymnasium vector env: sync (one process) or async (a process per env)"""

    def __post_init__(self):
        for name in ("screen_size", "frame_stack", "max_episode_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Atari100k env option {name} must be a positive integer, got {value!r}")
        for name in ("grayscale", "life_loss", "clip_rewards"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Atari100k env option {name} must be true or false, got {getattr(self, name)!r}")
        if self.vectorization not in ("sync", "async"):
            raise ValueError(f"Atari100k env option vectorization must be sync or async, got {self.vectorization!r}")

    @classmethod
    def from_dict(cls, options: dict) -> AtariOptions:
        """Options from a dict (e.g. JSON), refusing unknown names in one sentence."""
        names = [option.name for option in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown Atari100k env option {unknown[0]!r}; choose from: {', '.join(names)}")
        return cls(**options)


def check_atari_env(name: str, options: dict) -> None:
    """Refuse an unknown game or option (ValueError), or missing ale-py / opencv (ImportError), in one sentence."""
    atari_game(name)
    AtariOptions.from_dict(options)
    _register_ale()


def _register_ale() -> None:
    try:
        import ale_py
        import cv2  # noqa: F401  (AtariPreprocessing resizes with it)
    except ImportError:
        raise ImportError(MISSING_DEPENDENCIES) from None
    gymnasium.register_envs(ale_py)


class LifeLossTermination(gymnasium.Wrapper):
    """A lost life ends the episode (terminated=True); the next `reset` goes on with the same game
    through one no-op step instead of restarting it, unless the game itself is over.

    This is DQN's "episodic life" for training envs: the agent learns that dying ends its returns,
    while a game still lasts its full length."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        life_lost = 0 < lives < self.lives
        self.lives = lives
        return obs, reward, terminated or life_lost, truncated, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)  # action 0 is NOOP in every minimal set
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


def make_single_atari_env(game: str, options: AtariOptions = AtariOptions(), evaluation: bool = False) -> gymnasium.Env:
    """One Atari100k env of `game` (a short name, e.g. 'pong') with the protocol's wrappers;
    `evaluation` plays whole games with unclipped rewards."""
    _register_ale()
    env = gymnasium.make(f"ALE/{games()[game]}-v5", frameskip=1, repeat_action_probability=0.0,
                         full_action_space=False, max_num_frames_per_episode=options.max_episode_frames)
    env = gymnasium.wrappers.AtariPreprocessing(
        env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=options.screen_size,
        grayscale_obs=options.grayscale, grayscale_newaxis=True)
    if options.life_loss and not evaluation:
        env = LifeLossTermination(env)
    if options.frame_stack > 1:
        height, width, channels = env.observation_space.shape
        env = gymnasium.wrappers.FrameStackObservation(env, options.frame_stack)
        stacked = gymnasium.spaces.Box(0, 255, (height, width, channels * options.frame_stack), np.uint8)
        env = gymnasium.wrappers.TransformObservation(env, functools.partial(np.concatenate, axis=-1), stacked)
    if options.clip_rewards and not evaluation:
        env = gymnasium.wrappers.TransformReward(env, np.sign)
    return env


class AtariVectorEnv(GymnasiumVectorEnv):
    """`num_envs` envs of the game `name` ('atari100k-pong') in a gymnasium vector env (SAME_STEP
    autoreset), as torch tensors; `options` are `AtariOptions` fields, and `evaluation` plays whole
    games with unclipped rewards (the protocol's evaluation)."""

    def __init__(self, name: str, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None,
                 evaluation: bool = False, **options):
        self.game = atari_game(name)
        self.options = AtariOptions.from_dict(options)
        self.evaluation = evaluation
        super().__init__(name, num_envs, device, seed, vectorization_mode=self.options.vectorization,
                         env_factory=functools.partial(make_single_atari_env, self.game, self.options, evaluation))
        self.max_episode_steps = self.options.max_episode_frames // FRAME_SKIP


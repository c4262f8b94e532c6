"""Tiny gymnasium envs with composite spaces, registered on import (so `--env tests.envs.gymnasium_fakes:<id>`
works): each observation is drawn from its space with the env's RNG and every action is recorded."""

from __future__ import annotations

import copy

import gymnasium
import numpy as np
from gymnasium import spaces

EPISODE_LENGTH = 3

OBSERVATION_SPACES = {
    "Tuple": spaces.Tuple((spaces.Discrete(3, start=1), spaces.Box(-1.0, 1.0, (2,), np.float32))),
    "Dict": spaces.Dict({"cards": spaces.MultiDiscrete([2, 3]), "flags": spaces.MultiBinary(2),
                         "mission": spaces.Text(8), "view": spaces.Box(0, 9, (2, 2, 1), np.uint8)}),
    "Discrete": spaces.Discrete(4),
    "ImageDict": spaces.Dict({"pixels": spaces.Box(0, 255, (40, 40, 3), np.uint8), "mission": spaces.Text(8)}),
    "Graph": spaces.Graph(node_space=spaces.Discrete(2), edge_space=None),
}
ACTION_SPACES = {
    "Discrete": spaces.Discrete(3, start=-1),
    "MultiDiscrete": spaces.MultiDiscrete([2, 3]),
    "MultiBinary": spaces.MultiBinary(3),
    "Sequence": spaces.Sequence(spaces.Discrete(2)),
}


class CompositeSpaceEnv(gymnasium.Env):
    """Observations drawn from `observation_space`, episodes of EPISODE_LENGTH steps, actions kept in `actions`."""

    def __init__(self, observation: str = "Tuple", action: str = "Discrete"):
        self.observation_space = copy.deepcopy(OBSERVATION_SPACES[observation])  # each env draws from its own RNG
        self.action_space = ACTION_SPACES[action]
        self.actions: list = []
        self.elapsed = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.observation_space.seed(seed)
        self.elapsed = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.actions.append(action)
        self.elapsed += 1
        return self.observation_space.sample(), 1.0, self.elapsed >= EPISODE_LENGTH, False, {}


for _observation in OBSERVATION_SPACES:
    for _action in ACTION_SPACES:
        _id = f"memrl-test/{_observation}Obs{_action}Act-v0"
        if _id not in gymnasium.registry:
            gymnasium.register(_id, entry_point=CompositeSpaceEnv, kwargs={"observation": _observation, "action": _action})

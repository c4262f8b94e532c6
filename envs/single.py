"""One episode at a time: a native batched task behind the plain gymnasium.Env interface.

    env = gymnasium.make("memrl/MemoryRewrite-v0")
    obs, info = env.reset(seed=0)          # obs: float32 numpy [obs_dim]
    obs, reward, terminated, truncated, info = env.step(1)

Gymnasium semantics: no auto-reset. When an episode ends, `step` returns its final
observation and the user calls `reset()`. Internally the batched env (num_envs=1, CPU) has
already started the next episode in that step; `reset()` without a seed hands that episode
out, so a SingleEnv and a `BatchedEnv(num_envs=1)` seeded alike and fed the same actions
produce the same observations step for step, across episode boundaries too.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch

from envs.registry import make_env


class SingleEnv(gymnasium.Env):
    """The preset `name` (a short name from `envs.registry.env_names()`) as a single env."""

    metadata = {"render_modes": []}

    def __init__(self, name: str):
        self.name = name
        self.batched = make_env(name, num_envs=1, device="cpu")
        self.observation_space = self.batched.single_observation_space
        self.action_space = self.batched.single_action_space
        self.next_episode_obs: torch.Tensor | None = None
        """First observation of the episode the batched env started when the last one ended."""
        self.needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self.next_episode_obs is None:
            obs, _ = self.batched.reset(seed=seed)
        else:
            obs = self.next_episode_obs
        self.next_episode_obs = None
        self.needs_reset = False
        return obs[0].numpy().copy(), {}

    def step(self, action):
        if self.needs_reset:
            raise gymnasium.error.ResetNeeded(f"{self.name}: call reset() before step() and after an episode ends")
        obs, reward, terminated, truncated, info = self.batched.step(self._batch_of_one(action))
        done = bool(terminated[0] or truncated[0])
        if done:
            self.next_episode_obs = obs
            self.needs_reset = True
            obs = info["final_obs"]
        step_info = {"success": bool(info["success"][0])}
        return obs[0].numpy().copy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), step_info

    def _batch_of_one(self, action) -> torch.Tensor:
        """A gymnasium action as the batched env's action for one env; ValueError naming what is allowed."""
        if isinstance(self.action_space, gymnasium.spaces.Box):
            vector = np.asarray(action) if isinstance(action, (list, tuple, np.ndarray)) else None
            if vector is None or vector.shape != self.action_space.shape or not np.issubdtype(vector.dtype, np.number):
                raise ValueError(f"{self.name}: action must be an array of {self.action_space.shape[0]} numbers in "
                                 f"[{self.batched.action_low:g}, {self.batched.action_high:g}], got {action!r}")
            return torch.as_tensor(vector, dtype=torch.float32)[None]
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action.item()
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
            raise ValueError(f"{self.name}: action must be an integer in [0, {self.action_space.n}), got {action!r}")
        return torch.tensor([int(action)])

"""Any gymnasium env id (ALE, POPGym, classic control, ...) behind memrl's batched interface.

The adapter builds a gymnasium vector env in SAME_STEP autoreset mode: when an episode ends,
gymnasium returns the first observation of the next one in the same step and puts the last
one in `info["final_obs"]`. That is exactly memrl's convention, so the adapter only converts
arrays to tensors on `device`, sets `is_first`, and keeps per-env episode statistics.
`success` is read from the final info's "success" or "is_success" key where the env reports
one (False otherwise). Observations and rewards cross the host: these envs run on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv


class GymnasiumVectorEnv:
    """num_envs copies of gymnasium env `env_id`, stepped in lock-step, as torch tensors.

    With `env_factory` (a picklable callable returning one gymnasium env, e.g. an env with its
    wrappers), the copies are `env_factory()` instead and `env_id` only names them in messages;
    `vectorization_mode` is then sync or async."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        vectorization_mode: str = "sync",
        env_factory: Callable[[], gymnasium.Env] | None = None,
        **make_kwargs,
    ):
        if not isinstance(num_envs, int) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.env_id = env_id
        self.num_envs = num_envs
        self.device = torch.device(device)
        if env_factory is None:
            self.vector_env = gymnasium.make_vec(
                env_id,
                num_envs=num_envs,
                vectorization_mode=vectorization_mode,
                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                **make_kwargs,
            )
        else:
            vector_class = {"sync": SyncVectorEnv, "async": AsyncVectorEnv}[vectorization_mode]
            self.vector_env = vector_class([env_factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self.single_observation_space = self.vector_env.single_observation_space
        self.single_action_space = self.vector_env.single_action_space
        self.max_episode_steps = self.vector_env.spec.max_episode_steps if self.vector_env.spec else None
        self._seed = seed
        self.episode_return = np.zeros(num_envs, dtype=np.float64)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)
        # Whether `success` means anything: True once an env has reported "success" or "is_success".
        self.reports_success = False

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(array))
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        return tensor.to(self.device)

    def reset(self, seed: int | None = None):
        seed = seed if seed is not None else self._seed
        obs, _ = self.vector_env.reset(seed=seed)
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        return self._to_tensor(obs), {"is_first": torch.ones(self.num_envs, dtype=torch.bool, device=self.device)}

    def step(self, action: torch.Tensor):
        """Same contract as `envs.base.BatchedEnv.step`."""
        action_array = action.detach().cpu().numpy()
        if isinstance(self.single_action_space, gymnasium.spaces.Discrete):
            low, high = self.single_action_space.start, self.single_action_space.start + self.single_action_space.n
            if action_array.shape != (self.num_envs,) or ((action_array < low) | (action_array >= high)).any():
                raise ValueError(
                    f"{self.env_id}: actions must be integers in [{low}, {high}) of shape ({self.num_envs},), "
                    f"got shape {action_array.shape}"
                )
        else:
            action_array = np.clip(action_array, self.single_action_space.low, self.single_action_space.high)
        obs, reward, terminated, truncated, info = self.vector_env.step(action_array)
        done = np.logical_or(terminated, truncated)
        self.episode_return += reward
        self.episode_length += 1
        final_obs = np.array(obs, copy=True)
        success = np.zeros(self.num_envs, dtype=bool)
        if done.any():
            for index in np.flatnonzero(done):
                final_obs[index] = info["final_obs"][index]
                final_info = info["final_info"]
                for key in ("success", "is_success"):
                    if key in final_info and final_info.get(f"_{key}", np.ones(self.num_envs, bool))[index]:
                        success[index] = bool(final_info[key][index])
                        self.reports_success = True
        info_tensors = {
            "is_first": self._to_tensor(done),
            "final_obs": self._to_tensor(final_obs),
            "episode_done": self._to_tensor(done),
            "success": self._to_tensor(success),
            "episode_return": self._to_tensor(np.where(done, self.episode_return, 0.0).astype(np.float32)),
            "episode_length": self._to_tensor(np.where(done, self.episode_length, 0)),
        }
        self.episode_return[done] = 0.0
        self.episode_length[done] = 0
        return (
            self._to_tensor(obs),
            self._to_tensor(np.asarray(reward, dtype=np.float32)),
            self._to_tensor(terminated),
            self._to_tensor(truncated),
            info_tensors,
        )

    def close(self) -> None:
        self.vector_env.close()

"""A GPU-parallel ManiSkill env behind memrl's batched interface, with every tensor kept on its device.

    env = ManiSkillBatchedEnv("memrl/RememberColor3-v0", num_envs=256, device="cuda", seed=1)
    obs, info = env.reset()                     # obs uint8 [256, 64, 64, 3] on cuda
    obs, reward, terminated, truncated, info = env.step(action)   # action float32 [256, 4] on cuda

On a CUDA device the simulation is ManiSkill's GPU PhysX (`sim_backend="physx_cuda"`), one scene
per env, and observations, rewards and flags come back as CUDA tensors: nothing is copied to the
host. The only synchronisation per step is `done.any()`, because ManiSkill's partial reset takes
the indices of the envs to reset. On the CPU the simulation runs one env per process (ManiSkill's
rule), so `num_envs` must be 1 there.

Episodes auto-reset in the same step, as in `envs.base.BatchedEnv`: where an episode ended, `obs`
is already the next episode's first observation, `info["is_first"]` is True, `info["final_obs"]`
holds the observation it ended on, and `episode_done`, `success`, `episode_return` and
`episode_length` describe the finished episode (zero elsewhere). `truncated` (the time limit) is
never set together with `terminated` (success or failure).

`observation="rgb"` (the default) gives the camera image, uint8 [H, W, 3]: the memory tasks show
their cue in it, and memrl's agents take one tensor, so the image is the observation (the arm is
in view). `observation="state"` gives the robot's proprioception (joint positions, velocities, TCP
pose), float32 [25]; it shows nothing of the task and needs no renderer, for tests and benchmarks
of the simulation alone.
"""

from __future__ import annotations

import functools
import warnings

import gymnasium
import numpy as np
import torch

with warnings.catch_warnings():
    # SAPIEN falls back to its own libvulkan and says so on import; whether rendering works is asked below.
    warnings.filterwarnings("ignore", message="Failed to find system libvulkan")
    import sapien

from mani_skill.utils.registration import REGISTERED_ENVS

import envs.maniskill.tasks  # noqa: F401  (registers the ManiSkill env ids)
from envs.maniskill import VULKAN_REQUIRED, ManiSkillUnavailable

OBSERVATIONS = ("rgb", "state")


@functools.cache
def renderer_available() -> bool:
    """Whether SAPIEN finds a Vulkan device to render with (what RGB observations need): building its
    render system is the test, as ManiSkill's own `can_render` does not ask the driver."""
    try:
        sapien.render.RenderSystem()
    except RuntimeError:
        return False
    return True


class ManiSkillBatchedEnv:
    """`num_envs` parallel episodes of the ManiSkill env `env_id`; see the module docstring.

    `make_kwargs` go to `gymnasium.make` (e.g. `reward_mode="dense"`, `sensor_configs={"width": 128,
    "height": 128}`); the tasks default to sparse rewards and end-effector position control."""

    reports_success = True
    """ManiSkill's evaluate() defines success for every memrl task."""

    def __init__(self, env_id: str, num_envs: int, device: torch.device | str = "cuda", seed: int | None = None,
                 observation: str = "rgb", **make_kwargs):
        if not isinstance(num_envs, int) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {', '.join(OBSERVATIONS)}, got {observation!r}")
        if observation == "rgb" and not renderer_available():
            raise ManiSkillUnavailable(VULKAN_REQUIRED)
        device = torch.device(device)
        if device.type != "cuda" and num_envs != 1:
            raise ValueError(f"ManiSkill simulates one env per process on the CPU, so {num_envs} parallel envs "
                             "need a CUDA device")
        self.env_id = env_id
        self.num_envs = num_envs
        self.observation = observation
        sim_backend = "physx_cuda" if device.type == "cuda" else "physx_cpu"
        render_backend = "none" if observation == "state" else ("gpu" if device.type == "cuda" else "cpu")
        self.env = gymnasium.make(env_id, num_envs=num_envs, obs_mode=observation, sim_backend=sim_backend,
                                  render_backend=render_backend, **make_kwargs)
        self.base_env = self.env.unwrapped
        self.max_episode_steps = make_kwargs.get("max_episode_steps", REGISTERED_ENVS[env_id].max_episode_steps)
        self._seed = seed
        first_obs = self._observation(self.base_env.get_obs())
        self.device = first_obs.device  # with its index ("cuda:0"), which ManiSkill's own device leaves out
        low, high, dtype = (0, 255, np.uint8) if observation == "rgb" else (-np.inf, np.inf, np.float32)
        self.single_observation_space = gymnasium.spaces.Box(low, high, tuple(first_obs.shape[1:]), dtype)
        self.single_action_space = self.base_env.single_action_space
        self.episode_return = torch.zeros(num_envs, dtype=torch.float32, device=self.device)

    def _observation(self, raw) -> torch.Tensor:
        if self.observation == "rgb":
            return raw["sensor_data"]["base_camera"]["rgb"]
        return raw

    def reset(self, seed: int | None = None):
        """Start a new episode in every env -> (obs, info with is_first all True)."""
        seed = seed if seed is not None else self._seed
        raw, _ = self.env.reset(seed=seed)
        self.episode_return.zero_()
        every_env = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return self._observation(raw), {"is_first": every_env}

    def step(self, action: torch.Tensor):
        """Same contract as `envs.base.BatchedEnv.step`; `action` float [num_envs, action_dim] on the env's device."""
        self._check_action(action)
        raw, reward, terminated, truncated, info = self.env.step(action)
        terminated = terminated.bool()
        truncated = truncated.bool() & ~terminated
        done = terminated | truncated
        reward = reward.float()
        self.episode_return += reward
        obs = self._observation(raw)
        step_info = {
            "is_first": done,
            "final_obs": obs,
            "episode_done": done,
            "success": info["success"].bool() & done,
            "episode_return": torch.where(done, self.episode_return, 0.0),
            "episode_length": torch.where(done, self.base_env.elapsed_steps.long(), 0),
        }
        if bool(done.any()):
            # The renderer reuses its buffers, so the final image is copied before the reset renders.
            step_info["final_obs"] = obs.clone()
            raw, _ = self.env.reset(options={"env_idx": done.nonzero()[:, 0]})
            mask = done.view(-1, *([1] * (obs.dim() - 1)))
            obs = torch.where(mask, self._observation(raw), step_info["final_obs"])
            self.episode_return.masked_fill_(done, 0.0)
        return obs, reward, terminated, truncated, step_info

    def _check_action(self, action: torch.Tensor) -> None:
        shape = (self.num_envs, *self.single_action_space.shape)
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"{self.env_id}.step: action must be a torch.Tensor, got {type(action).__name__}")
        if tuple(action.shape) != shape or not action.is_floating_point():
            raise ValueError(f"{self.env_id}.step: action must be a float tensor of shape {shape}, "
                             f"got {action.dtype} {tuple(action.shape)}")
        if action.device != self.device:
            raise ValueError(f"{self.env_id}.step: action is on {action.device}, the env is on {self.device}")

    def close(self) -> None:
        self.env.close()

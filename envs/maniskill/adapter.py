"""A GPU-parallel ManiSkill env behind memrl's batched interface, with every tensor kept on its device.

    env = ManiSkillBatchedEnv("memrl/RememberColor3-v0", num_envs=256, device="cuda", seed=1)
    obs, info = env.reset()   # obs: base_camera, hand_camera uint8 [256, 128, 128, 3], joints [256, 25]
    obs, reward, terminated, truncated, info = env.step(action)   # action float32 [256, 8] on cuda

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

`observation` picks what the agent sees:
- "rgb+joints" (the default; MIKASA-Robo's memory-test mode): a dict of tensors, one uint8
  [H, W, 3] image per camera of the task (the MIKASA-Robo tasks: `base_camera` and the wrist's
  `hand_camera`, 128 x 128; memrl's touch tasks: `base_camera`, 64 x 64) and `joints`, float32
  [25]: TCP pose (7), joint positions (9) and velocities (9), in MIKASA-Robo's order. MIKASA-Robo
  stacks the two images on the channel axis; memrl keeps one key per camera, so a dict encoder runs
  a CNN per camera (`agents.networks.DictEncoder`). Tasks with an instruction (Rotate: the target
  angle) add it as `prompt`, float32 [1], as MIKASA-Robo does.
- "rgb": the base camera's image alone, uint8 [H, W, 3] (the arm is in view).
- "state": the task's flat state vector, float32: for the MIKASA-Robo tasks MIKASA-Robo's state
  (proprioception plus object poses and `oracle_info`, the answer: an MDP, for debugging); for
  memrl's touch tasks the proprioception alone [25]. It needs no renderer; without one, the
  MIKASA-Robo tasks use the `panda` robot (the same arm without the wrist camera's mount), since
  the `panda_wristcam` model needs a renderer to load.
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

import envs.maniskill.mikasa  # noqa: F401  (registers the ManiSkill env ids)
import envs.maniskill.tasks  # noqa: F401
from envs.maniskill import VULKAN_REQUIRED, ManiSkillUnavailable

OBSERVATIONS = ("rgb+joints", "rgb", "state")


@functools.cache
def renderer_available() -> bool:
    """Whether SAPIEN finds a Vulkan device to render with (what RGB observations need): building its
    render system is the test, as ManiSkill's own `can_render` does not ask the driver."""
    try:
        sapien.render.RenderSystem()
    except RuntimeError:
        return False
    return True


def _map(function, *observations):
    """`function` applied to a tensor observation, or key by key to dict observations."""
    if isinstance(observations[0], dict):
        return {key: function(*(observation[key] for observation in observations)) for key in observations[0]}
    return function(*observations)


def _space_of(observation) -> gymnasium.Space:
    """The single-env space of a batched observation: images uint8 0..255, anything else float32."""
    if isinstance(observation, dict):
        return gymnasium.spaces.Dict({key: _space_of(value) for key, value in observation.items()})
    if observation.dtype == torch.uint8:
        return gymnasium.spaces.Box(0, 255, tuple(observation.shape[1:]), np.uint8)
    return gymnasium.spaces.Box(-np.inf, np.inf, tuple(observation.shape[1:]), np.float32)


class ManiSkillBatchedEnv:
    """`num_envs` parallel episodes of the ManiSkill env `env_id`; see the module docstring.

    `make_kwargs` go to `gymnasium.make` (e.g. `reward_mode="sparse"`, `sensor_configs={"width": 64,
    "height": 64}`); each task keeps its own defaults (MIKASA-Robo tasks: normalized dense reward,
    joint-delta control; memrl's touch tasks: sparse reward, end-effector control)."""

    reports_success = True
    """ManiSkill's evaluate() defines success for every memrl task."""

    def __init__(self, env_id: str, num_envs: int, device: torch.device | str = "cuda", seed: int | None = None,
                 observation: str = "rgb+joints", **make_kwargs):
        if not isinstance(num_envs, int) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {', '.join(OBSERVATIONS)}, got {observation!r}")
        rendering = observation != "state"
        if rendering and not renderer_available():
            raise ManiSkillUnavailable(VULKAN_REQUIRED)
        if not rendering and "robot_uids" not in make_kwargs and not renderer_available():
            make_kwargs["robot_uids"] = "panda"  # panda_wristcam's model cannot load without a renderer
        device = torch.device(device)
        if device.type != "cuda" and num_envs != 1:
            raise ValueError(f"ManiSkill simulates one env per process on the CPU, so {num_envs} parallel envs "
                             "need a CUDA device")
        self.env_id = env_id
        self.num_envs = num_envs
        self.observation = observation
        sim_backend = "physx_cuda" if device.type == "cuda" else "physx_cpu"
        render_backend = "none" if not rendering else ("gpu" if device.type == "cuda" else "cpu")
        obs_mode = "rgb" if rendering else "state"
        self.env = gymnasium.make(env_id, num_envs=num_envs, obs_mode=obs_mode, sim_backend=sim_backend,
                                  render_backend=render_backend, **make_kwargs)
        self.base_env = self.env.unwrapped
        self.max_episode_steps = make_kwargs.get("max_episode_steps", REGISTERED_ENVS[env_id].max_episode_steps)
        self._seed = seed
        first_obs = self._observation(self.base_env.get_obs())
        # The device with its index ("cuda:0"), which ManiSkill's own device leaves out.
        self.device = next(iter(first_obs.values())).device if isinstance(first_obs, dict) else first_obs.device
        self.single_observation_space = _space_of(first_obs)
        self.single_action_space = self.base_env.single_action_space
        self.episode_return = torch.zeros(num_envs, dtype=torch.float32, device=self.device)

    def _observation(self, raw) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.observation == "state":
            return raw
        if self.observation == "rgb":
            return raw["sensor_data"]["base_camera"]["rgb"]
        images = {camera: data["rgb"] for camera, data in raw["sensor_data"].items()}
        joints = torch.cat([raw["extra"]["tcp_pose"], raw["agent"]["qpos"], raw["agent"]["qvel"]], dim=-1)
        prompt = {"prompt": raw["extra"]["prompt"].float()} if "prompt" in raw["extra"] else {}
        return {**images, "joints": joints.float(), **prompt}

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
            # The renderer reuses its buffers, so the final images are copied before the reset renders.
            step_info["final_obs"] = _map(torch.clone, obs)
            raw, _ = self.env.reset(options={"env_idx": done.nonzero()[:, 0]})
            obs = _map(lambda new, old: torch.where(done.view(-1, *([1] * (old.dim() - 1))), new, old),
                       self._observation(raw), step_info["final_obs"])
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

"""Batched torch environments: many episodes stepped at once on one device.

    env = EndlessTMaze(num_envs=4096, device="cuda", seed=0)
    obs, info = env.reset()                       # obs [N, obs_dim] float32
    obs, reward, terminated, truncated, info = env.step(action)   # action int64 [N]

Actions are int64 [N] in [0, num_actions) (a Discrete space), or, for a task that sets
`action_dim`, float [N, action_dim] vectors (a flat Box [action_low, action_high]) that the
task clips to those bounds, as gymnasium's continuous-control envs do.

Every tensor stays on `env.device`. Episodes auto-reset in the same step: where an episode
ended (terminated or truncated), `obs` is already the first observation of the next one,
`info["is_first"]` is True, and the observation the finished episode ended on is in
`info["final_obs"]` (needed to bootstrap a truncated episode). For the episodes that ended
in this step, `info["episode_done"]` is True and `info["success"]`, `info["episode_return"]`
and `info["episode_length"]` describe them (those entries are zero elsewhere).

A task subclasses `BatchedEnv` and provides `_start_episodes(mask)`, `_transition(action)`
and `_observe()`; the base class does the bookkeeping (time limit, statistics, auto-reset,
input checks). Every task also provides `oracle_action()` (a perfect-memory policy that
reads the hidden state) and `memoryless_action(obs)` (the best policy that sees only the
current observation), which the tests use to prove the task needs memory.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch


class BatchedEnv:
    """Base of memrl's native envs; see the module docstring for the interface."""

    obs_dim: int
    num_actions: int
    """Discrete tasks: how many actions there are."""
    action_dim: int | None = None
    """Continuous tasks: the length of an action vector; None for Discrete tasks."""
    action_low: float = -1.0
    action_high: float = 1.0
    """Continuous tasks: the bounds each action entry is clipped to (the gymnasium Box)."""
    max_episode_steps: int
    chance_success: float
    """Success rate of the best memoryless policy (what a policy without memory can reach)."""
    reports_success = True
    """Every native task defines success, so `info["success"]` is meaningful (progress lines show it)."""
    obs_low: float = -np.inf
    obs_high: float = np.inf
    """Bounds of every observation entry (the gymnasium observation space)."""

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None):
        if not isinstance(num_envs, int) or num_envs <= 0:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        self.single_observation_space = gymnasium.spaces.Box(self.obs_low, self.obs_high, (self.obs_dim,), np.float32)
        if self.action_dim is None:
            self.single_action_space = gymnasium.spaces.Discrete(self.num_actions)
        else:
            self.single_action_space = gymnasium.spaces.Box(self.action_low, self.action_high, (self.action_dim,), np.float32)
        self.elapsed_steps = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.episode_return = torch.zeros(num_envs, dtype=torch.float32, device=self.device)

    # -- what a task provides ------------------------------------------------------------

    def _start_episodes(self, mask: torch.Tensor) -> None:
        """Draw a fresh episode for every env where `mask` [N] is True. The random numbers drawn must not
        depend on the mask (draw for every env, keep the masked ones; see `_restart_rows`)."""
        raise NotImplementedError

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply `action` [N] -> (reward float32 [N], terminated bool [N], success bool [N])."""
        raise NotImplementedError

    def _observe(self) -> torch.Tensor:
        """The current observation of every env, float32 [N, obs_dim]."""
        raise NotImplementedError

    def oracle_action(self) -> torch.Tensor:
        """A perfect-memory action for every env (reads the hidden state), int64 [N] (float32 [N, action_dim])."""
        raise NotImplementedError

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The best action from the current observation alone, int64 [N] (float32 [N, action_dim])."""
        raise NotImplementedError

    # -- the interface -------------------------------------------------------------------

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def random(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) floats from this env's generator, on its device."""
        return torch.rand(shape, generator=self.generator, device=self.device)

    def randint(self, low: int | torch.Tensor, high: int | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Integers uniform in [low, high) (bounds may be tensors broadcast to `shape`)."""
        return (low + (self.random(*shape) * (high - low)).floor()).long()

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Start a new episode in every env -> (obs [N, obs_dim], info with is_first all True)."""
        if seed is not None:
            self.seed(seed)
        everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._start_episodes(everyone)
        self.elapsed_steps.zero_()
        self.episode_return.zero_()
        return self._observe(), {"is_first": everyone}

    def step(self, action: torch.Tensor):
        """Step every env -> (obs, reward, terminated, truncated, info); see the module docstring."""
        self._check_action(action)
        reward, terminated, success = self._transition(action)
        self.elapsed_steps += 1
        self.episode_return += reward
        at_limit = self.elapsed_steps >= self.max_episode_steps
        truncated = at_limit > terminated
        done = terminated | at_limit
        final_obs = self._observe()
        info = {
            "is_first": done,
            "final_obs": final_obs,
            "episode_done": done,
            "success": success & done,
            "episode_return": torch.where(done, self.episode_return, 0.0),
            "episode_length": torch.where(done, self.elapsed_steps, 0),
        }
        self._start_episodes(done)
        if self.device.type == "cpu" and not bool(done.any()):
            # Nothing restarted (checked on the CPU only, where it costs no host sync): obs is final_obs.
            return final_obs.clone(), reward, terminated, truncated, info
        self.elapsed_steps.masked_fill_(done, 0)
        self.episode_return.masked_fill_(done, 0.0)
        obs = torch.where(done[:, None], self._observe(), final_obs)
        return obs, reward, terminated, truncated, info

    def _restart_rows(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The envs `_start_episodes(mask)` restarts, for a task whose episode setup is costly: on the CPU
        their indices int64 [K] (finding them costs no host sync there), so the task sets up those K envs
        only; on an accelerator None, and the task sets up every env and keeps the masked ones. Either
        way the task draws its random numbers for every env first, so the draws never depend on the mask."""
        return mask.nonzero().squeeze(1) if self.device.type == "cpu" else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the env's current episodes plus its generator state (for checkpoints)."""
        state = {name: value.clone() for name, value in vars(self).items() if isinstance(value, torch.Tensor)}
        state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned, so a resumed run continues the same episodes."""
        state = dict(state)
        self.generator.set_state(state.pop("generator_state"))
        for name, value in state.items():
            current = getattr(self, name, None)
            if not isinstance(current, torch.Tensor) or current.shape != value.shape:
                raise ValueError(f"{type(self).__name__}: env state entry {name!r} does not match this env")
            setattr(self, name, value.to(self.device))

    def _check_action(self, action: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"{name}.step: action must be a torch.Tensor, got {type(action).__name__}")
        if action.device != self.device:
            raise ValueError(f"{name}.step: action is on {action.device}, the env is on {self.device}")
        if self.action_dim is not None:
            self._check_continuous_action(action)
            return
        if action.shape != (self.num_envs,):
            raise ValueError(f"{name}.step: action must have shape ({self.num_envs},), got {tuple(action.shape)}")
        if action.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"{name}.step: action must be an integer tensor, got {action.dtype}")
        if self.device.type == "cpu":
            lowest, highest = torch.aminmax(action)
            if int(lowest) >= 0 and int(highest) < self.num_actions:
                return
        self._fail_where(action, (action < 0) | (action >= self.num_actions), f"{name}.step: actions must be in [0, {self.num_actions})")

    def _check_continuous_action(self, action: torch.Tensor) -> None:
        name = type(self).__name__
        shape = (self.num_envs, self.action_dim)
        if action.shape != shape:
            raise ValueError(f"{name}.step: action must have shape {shape} of floats, got {tuple(action.shape)}")
        if not action.dtype.is_floating_point:
            raise ValueError(f"{name}.step: action must be a floating-point tensor, got {action.dtype}")
        bounds = f"[{self.action_low:g}, {self.action_high:g}]"
        self._fail_where(action, ~torch.isfinite(action), f"{name}.step: actions must be finite numbers (clipped to {bounds})")

    def _fail_where(self, action: torch.Tensor, bad: torch.Tensor, message: str) -> None:
        """Raise `message` (with a few of the bad values) where `bad` holds anywhere."""
        if self.device.type == "cpu":
            if bool(bad.any()):
                raise ValueError(f"{message}, got {action[bad][:8].tolist()}")
        else:
            # No host sync on accelerators: the check runs on the device and fails the stream.
            torch._assert_async(~bad.any(), message)

"""Any gymnasium env id (ALE, POPGym, MiniGrid, classic control, ...) behind memrl's batched interface.

The adapter builds a gymnasium vector env in SAME_STEP autoreset mode: when an episode ends,
gymnasium returns the first observation of the next one in the same step and puts the last
one in `info["final_obs"]`. That is exactly memrl's convention, so the adapter converts arrays
to tensors on `device`, sets `is_first`, and keeps per-env episode statistics. `success` is
read from the final info's "success" or "is_success" key where the env reports one (False
otherwise). Observations and rewards cross the host: these envs run on the CPU.

Ids: a registered id ("CartPole-v1") or gymnasium's `module:EnvId` form
("popgym:popgym-RepeatPreviousEasy-v0"), which imports `module` first so that it registers
its envs (see `resolve_env_id`).

Spaces. memrl's agents read a flat Box (vector) or a Box [H, W, C] image, and act in Discrete
or a flat Box; `ObservationConverter` and `ActionConverter` bring other spaces to those:
- observations: a flat Box and an image the CNN can read (H, W >= `MIN_IMAGE_SIZE`) are kept;
  anything else becomes a flat float32 Box [D] per env (so [N, D] batched): Discrete -> one-hot,
  MultiDiscrete -> one one-hot per entry, concatenated, MultiBinary -> its 0/1 entries, a Box of
  any other shape (a small image such as MiniGrid's 7x7x3 view) -> its entries in C order
  (values unscaled, as `gymnasium.spaces.flatten` gives them), Tuple -> its entries in order,
  Dict -> its entries in key order. Text entries of a Tuple or Dict (MiniGrid's mission string)
  are dropped: memrl agents read no text. A Tuple or Dict whose only non-text entry is an image
  the CNN can read becomes that image.
- actions: Discrete(n, start) -> Discrete(n) (the start is added back), MultiDiscrete -> one
  Discrete over every combination (C order, at most `MAX_JOINT_ACTIONS`), MultiBinary(n) ->
  Discrete(2^n) likewise, a flat Box is kept (actions are clipped to its bounds).
Any other space is refused with a ValueError that names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

MIN_IMAGE_SIZE = 36
"""Smallest height and width agents.networks.CNNEncoder (the Nature-DQN stack: 8/4, 4/2, 3/1) can read."""

MAX_JOINT_ACTIONS = 4096
"""Largest MultiDiscrete / MultiBinary action space turned into one Discrete."""

SUPPORTED_OBSERVATIONS = "Box, Discrete, MultiDiscrete, MultiBinary, and Tuple or Dict of those (text entries dropped)"
SUPPORTED_ACTIONS = (
    f"Discrete, a flat Box, a 1-D MultiDiscrete or MultiBinary of at most {MAX_JOINT_ACTIONS} combinations"
)


def resolve_env_id(name: str) -> str:
    """'module:EnvId' -> 'EnvId' after importing `module` (which registers its envs); a plain id is
    returned as is. ValueError (one sentence) when the module cannot be imported or the id is not
    registered."""
    module, _, env_id = name.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"--env {name!r} names the module {module!r}, which cannot be imported ({error})"
            ) from None
    if env_id not in gymnasium.registry:
        where = (f"after importing {module!r}" if module
                 else "(use 'module:EnvId' to import the module that registers it)")
        raise ValueError(f"gymnasium id {env_id!r} is not registered {where}")
    return env_id


def is_cnn_image(space: gymnasium.Space) -> bool:
    """A Box [H, W, C] large enough for the agents' CNN."""
    return (
        isinstance(space, spaces.Box) and len(space.shape) == 3
        and space.shape[0] >= MIN_IMAGE_SIZE and space.shape[1] >= MIN_IMAGE_SIZE
    )


def is_text(space: gymnasium.Space) -> bool:
    """gymnasium's Text, or any space of strings (MiniGrid's MissionSpace, dtype '<U0')."""
    return isinstance(space, spaces.Text) or (space.dtype is not None and space.dtype.kind == "U")


def _entries(space: spaces.Tuple | spaces.Dict) -> list[tuple[object, gymnasium.Space]]:
    """(key, sub-space) of a Tuple (index keys) or Dict (in its key order), text entries left out."""
    items = enumerate(space.spaces) if isinstance(space, spaces.Tuple) else space.spaces.items()
    return [(key, sub) for key, sub in items if not is_text(sub)]


def _batch_of_one(space: gymnasium.Space, obs):
    """One env's observation of `space` in the batched layout of a one-env vector env (text left out)."""
    if isinstance(space, spaces.Tuple):
        kept = dict(_entries(space))
        return tuple(
            _batch_of_one(sub, entry) if index in kept else None
            for index, (sub, entry) in enumerate(zip(space.spaces, obs))
        )
    if isinstance(space, spaces.Dict):
        return {key: _batch_of_one(sub, obs[key]) for key, sub in _entries(space)}
    return np.asarray(obs)[None]


class ObservationConverter:
    """Batched observations of `space` -> arrays of the space agents read (see the module docstring).

    `space` is the converted single-env space; `batch(obs, N)` takes what the vector env returns
    for N envs and gives [N, ...]; `single(obs)` takes one env's observation and gives [...]."""

    def __init__(self, original: gymnasium.Space, env_name: str):
        self.original = original
        self.image_key = None
        if isinstance(original, (spaces.Tuple, spaces.Dict)):
            entries = _entries(original)
            if len(entries) == 1 and is_cnn_image(entries[0][1]):
                self.image_key = entries[0][0]
        if self.image_key is not None:
            self.space, self.kind = original[self.image_key], "entry"
        elif isinstance(original, spaces.Box) and (len(original.shape) == 1 or is_cnn_image(original)):
            self.space, self.kind = original, "keep"
        else:
            try:
                low, high = self._bounds(original)
            except ValueError:
                raise ValueError(
                    f"{env_name}: the observation space {original} is not supported; "
                    f"memrl reads {SUPPORTED_OBSERVATIONS}"
                ) from None
            self.space = spaces.Box(low, high, low.shape, np.float32)
            self.kind = "flatten"

    @classmethod
    def _bounds(cls, space: gymnasium.Space) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the flat encoding of `space`, float32 [D] each."""
        if isinstance(space, spaces.Discrete):
            dim = int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            dim = int(space.nvec.sum())
        elif isinstance(space, spaces.MultiBinary):
            dim = int(np.prod(space.shape))
        elif isinstance(space, spaces.Box):
            return space.low.astype(np.float32).ravel(), space.high.astype(np.float32).ravel()
        elif isinstance(space, (spaces.Tuple, spaces.Dict)):
            bounds = [cls._bounds(sub) for _, sub in _entries(space)]
            if not bounds:
                raise ValueError("no readable entry")
            return np.concatenate([low for low, _ in bounds]), np.concatenate([high for _, high in bounds])
        else:
            raise ValueError("unsupported")
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)

    @classmethod
    def _flatten(cls, space: gymnasium.Space, obs, num_envs: int) -> np.ndarray:
        """Batched `obs` of `space` -> float32 [num_envs, D]."""
        if isinstance(space, spaces.Discrete):
            return np.eye(int(space.n), dtype=np.float32)[np.asarray(obs).reshape(num_envs) - space.start]
        if isinstance(space, spaces.MultiDiscrete):
            values = (np.asarray(obs) - space.start).reshape(num_envs, -1)
            return np.concatenate(
                [np.eye(int(n), dtype=np.float32)[values[:, i]] for i, n in enumerate(space.nvec.ravel())], axis=1
            )
        if isinstance(space, (spaces.Box, spaces.MultiBinary)):
            return np.asarray(obs, dtype=np.float32).reshape(num_envs, -1)
        return np.concatenate([cls._flatten(sub, obs[key], num_envs) for key, sub in _entries(space)], axis=1)

    def batch(self, obs, num_envs: int) -> np.ndarray:
        if self.kind == "keep":
            return np.asarray(obs)
        if self.kind == "entry":
            return np.asarray(obs[self.image_key])
        return self._flatten(self.original, obs, num_envs)

    def single(self, obs) -> np.ndarray:
        if self.kind == "keep":
            return np.asarray(obs)
        return self.batch(_batch_of_one(self.original, obs), 1)[0]


class ActionConverter:
    """Actions agents choose in `space` -> actions of the env's own `original` space (batched)."""

    def __init__(self, original: gymnasium.Space, env_name: str):
        self.original = original
        self.env_name = env_name
        if isinstance(original, spaces.Discrete):
            self.space = spaces.Discrete(int(original.n))
        elif isinstance(original, spaces.Box) and len(original.shape) == 1:
            self.space = original
        elif (isinstance(original, spaces.MultiDiscrete) and original.nvec.ndim == 1
              and original.nvec.prod() <= MAX_JOINT_ACTIONS):
            self.space = spaces.Discrete(int(original.nvec.prod()))
        elif (isinstance(original, spaces.MultiBinary) and len(original.shape) == 1
              and 2 ** original.n <= MAX_JOINT_ACTIONS):
            self.space = spaces.Discrete(2 ** int(original.n))
        else:
            raise ValueError(
                f"{env_name}: the action space {original} is not supported; memrl acts in {SUPPORTED_ACTIONS}"
            )

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if isinstance(self.original, spaces.Box):
            return np.clip(action, self.original.low, self.original.high)
        count = int(self.space.n)
        num_envs = action.shape[0] if action.ndim else 0
        well_formed = action.shape == (num_envs,) and np.issubdtype(action.dtype, np.integer)
        if not well_formed or ((action < 0) | (action >= count)).any():
            raise ValueError(f"{self.env_name}: actions must be integers in [0, {count}) of shape (num_envs,), "
                             f"got shape {action.shape}")
        if isinstance(self.original, spaces.Discrete):
            return action + self.original.start
        if isinstance(self.original, spaces.MultiDiscrete):
            return np.stack(np.unravel_index(action, tuple(self.original.nvec)), axis=1) + self.original.start
        bits = (action[:, None] >> np.arange(int(self.original.n))[::-1]) & 1
        return bits.astype(self.original.dtype)


class GymnasiumVectorEnv:
    """num_envs copies of gymnasium env `env_id` (or 'module:EnvId'), stepped in lock-step, as torch tensors.

    With `env_factory` (a picklable callable returning one gymnasium env, e.g. an env with its
    wrappers), the copies are `env_factory()` instead and `env_id` only names them in messages;
    `vectorization_mode` is then sync or async. `single_observation_space` and
    `single_action_space` are the converted spaces (see the module docstring)."""

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
                resolve_env_id(env_id),
                num_envs=num_envs,
                vectorization_mode=vectorization_mode,
                vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
                **make_kwargs,
            )
        else:
            vector_class = {"sync": SyncVectorEnv, "async": AsyncVectorEnv}[vectorization_mode]
            self.vector_env = vector_class([env_factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        try:
            self.observations = ObservationConverter(self.vector_env.single_observation_space, env_id)
            self.actions = ActionConverter(self.vector_env.single_action_space, env_id)
        except ValueError:
            self.vector_env.close()
            raise
        self.single_observation_space = self.observations.space
        self.single_action_space = self.actions.space
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
        is_first = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return self._to_tensor(self.observations.batch(obs, self.num_envs)), {"is_first": is_first}

    def step(self, action: torch.Tensor):
        """Same contract as `envs.base.BatchedEnv.step`."""
        action_array = self.actions(action.detach().cpu().numpy())
        obs, reward, terminated, truncated, info = self.vector_env.step(action_array)
        obs = self.observations.batch(obs, self.num_envs)
        done = np.logical_or(terminated, truncated)
        self.episode_return += reward
        self.episode_length += 1
        final_obs = np.array(obs, copy=True)
        success = np.zeros(self.num_envs, dtype=bool)
        if done.any():
            for index in np.flatnonzero(done):
                final_obs[index] = self.observations.single(info["final_obs"][index])
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

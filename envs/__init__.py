"""Batched memory POMDPs (torch, any device) and adapters; imports nothing else of memrl's.

Importing `envs` registers every short name of `envs.registry` (aliases included) with
gymnasium as a single env, `gymnasium.make("memrl/MemoryRewrite-v0")`; see `envs.single`.
"""

import gymnasium

from envs.registry import gymnasium_id, presets


def _register_with_gymnasium() -> None:
    for name, (task_class, kwargs) in presets().items():
        env_id = gymnasium_id(name)
        if env_id in gymnasium.registry:
            continue
        # A one-env CPU instance is cheap and is the only place the time limit is computed.
        max_episode_steps = task_class(num_envs=1, seed=0, **kwargs).max_episode_steps
        gymnasium.register(
            id=env_id, entry_point="envs.single:SingleEnv", kwargs={"name": name}, max_episode_steps=max_episode_steps
        )


_register_with_gymnasium()

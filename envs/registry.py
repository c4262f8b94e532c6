"""Short env names for the CLI, and their gymnasium registrations.

Every task module listed in `TASK_MODULES` defines `PRESETS: dict[str, tuple[type, dict]]`,
short name -> (BatchedEnv subclass, constructor kwargs), e.g. "repeat-previous-easy". The
bare task name (e.g. "repeat-previous") is one of them and names its default preset.
`ALIASES` adds the two canonical names of memrl's studies. Each short name is also
registered with gymnasium as a single env, id "memrl/<CamelCase>-v0".
"""

from __future__ import annotations

import importlib
from functools import cache

import torch

from envs.base import BatchedEnv

TASK_MODULES = ("envs.tmaze", "envs.endless_tmaze", "envs.color_cubes", "envs.popgym")

ALIASES = {
    "memory-retention": "tmaze-passive-l100",
    "memory-rewrite": "endless-tmaze-fixed-l5-n3",
}


@cache
def presets() -> dict[str, tuple[type[BatchedEnv], dict]]:
    """Every short name (aliases included) -> (task class, kwargs)."""
    table: dict[str, tuple[type[BatchedEnv], dict]] = {}
    for module_name in TASK_MODULES:
        table.update(importlib.import_module(module_name).PRESETS)
    for alias, target in ALIASES.items():
        table[alias] = table[target]
    return table


def env_names() -> list[str]:
    return sorted(presets())


def make_env(name: str, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, **overrides) -> BatchedEnv:
    """Build the batched env called `name` (see `env_names()`); `overrides` replace preset kwargs."""
    table = presets()
    if name not in table:
        raise ValueError(f"unknown env {name!r}; choose one of: {', '.join(sorted(table))}, or a gymnasium id")
    task_class, kwargs = table[name]
    return task_class(num_envs=num_envs, device=device, seed=seed, **{**kwargs, **overrides})


def gymnasium_id(name: str) -> str:
    """'repeat-previous-easy' -> 'memrl/RepeatPreviousEasy-v0'."""
    return "memrl/" + "".join(part.capitalize() for part in name.split("-")) + "-v0"

"""ManiSkill 3 memory-manipulation tasks behind memrl's batched interface: MIKASA-Robo's tasks under
their published names (`envs.maniskill.mikasa`) and memrl's own touch variants (`envs.maniskill.tasks`).

    env = make_maniskill_env("maniskill-remember-color-3", num_envs=256, device="cuda", seed=1)
    train-agent --env maniskill-remember-color-3 --num-envs 256

Importing this package does not import mani-skill (an optional dependency: `pip install
'memrl[maniskill]'`); building an env does. RGB observations (the default) need a Vulkan-capable
GPU; without one, building an env with them raises `ManiSkillUnavailable` with one sentence.
"""

from __future__ import annotations

import importlib.util

import torch

ENV_PREFIX = "maniskill-"

MIKASA_TASKS = {
    **{f"maniskill-remember-color-{count}": f"memrl/RememberColor{count}-v0" for count in (3, 5, 9)},
    **{f"maniskill-remember-shape-{count}": f"memrl/RememberShape{count}-v0" for count in (3, 5, 9)},
    **{f"maniskill-remember-shape-and-color-{level}": f"memrl/RememberShapeAndColor{level}-v0"
       for level in ("3x2", "3x3", "5x3")},
    **{f"maniskill-shell-game-{mode}": f"memrl/ShellGame{mode.capitalize()}-v0" for mode in ("touch", "push", "pick")},
    **{f"maniskill-{family.lower()}-of-colors-{count}": f"memrl/{family}OfColors{count}-v0"
       for family in ("Bunch", "Seq", "Chain") for count in (3, 5, 7)},
    **{f"maniskill-intercept{grab}-{speed}": f"memrl/Intercept{grab.strip('-').capitalize()}{speed.capitalize()}-v0"
       for grab in ("", "-grab") for speed in ("slow", "medium", "fast")},
    **{f"maniskill-rotate-{rule}-{targets}": f"memrl/Rotate{rule.capitalize()}{level}-v0"
       for rule in ("lenient", "strict") for targets, level in (("pos", "Pos"), ("pos-neg", "PosNeg"))},
    "maniskill-take-it-back": "memrl/TakeItBack-v0",
}
"""MIKASA-Robo's tasks under their published names (envs.maniskill.mikasa)."""
TOUCH_TASKS = {
    **{f"maniskill-touch-remember-color-{count}": f"memrl/TouchRememberColor{count}-v0" for count in (3, 5, 9)},
    "maniskill-touch-shell-game-swap": "memrl/TouchShellGameSwap-v0",
    **{f"maniskill-touch-seq-of-colors-{count}": f"memrl/TouchSeqOfColors{count}-v0" for count in (3, 5, 7)},
    **{f"maniskill-touch-chain-of-colors-{count}": f"memrl/TouchChainOfColors{count}-v0" for count in (3, 5, 7)},
}
"""memrl's own touch variants (envs.maniskill.tasks)."""
TASKS = {**MIKASA_TASKS, **TOUCH_TASKS}
"""memrl short name -> ManiSkill env id (registered with ManiSkill and gymnasium on importing the adapter)."""

MISSING_DEPENDENCY = "ManiSkill tasks need mani-skill: pip install 'memrl[maniskill]'"
VULKAN_REQUIRED = "ManiSkill tasks need a Vulkan-capable GPU (ManiSkill renderer), and this machine has none"


class ManiSkillUnavailable(RuntimeError):
    """mani-skill is not installed, or this machine cannot run its renderer."""


def is_maniskill_name(name: str) -> bool:
    """Whether `name` asks for a ManiSkill task (a known one or not)."""
    return name.startswith(ENV_PREFIX)


def maniskill_names() -> list[str]:
    return sorted(TASKS)


def maniskill_env_id(name: str) -> str:
    """'maniskill-remember-color-3' -> 'memrl/RememberColor3-v0'; ValueError naming the choices otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown ManiSkill task {name!r}; choose one of: {', '.join(maniskill_names())}")
    return TASKS[name]


def make_maniskill_env(name: str, num_envs: int, device: torch.device | str = "cuda", seed: int | None = None,
                       **options):
    """The task `name` as an `envs.maniskill.adapter.ManiSkillBatchedEnv`; `options` go to the adapter."""
    env_id = maniskill_env_id(name)
    if importlib.util.find_spec("mani_skill") is None:
        raise ManiSkillUnavailable(MISSING_DEPENDENCY)
    from envs.maniskill.adapter import ManiSkillBatchedEnv

    return ManiSkillBatchedEnv(env_id, num_envs=num_envs, device=device, seed=seed, **options)

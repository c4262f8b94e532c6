"""`train-agent`: train an agent with a memory backbone on a task, log it, checkpoint it, evaluate it.

    train-agent --backbone s5 --env memory-rewrite
    train-agent --backbone lstm --env memory-retention --seed 3
    train-agent --run-dir runs/my-run --resume

Settings are layered: the config defaults, then the preset (`--preset auto` picks the preset
named like the env, then the one named "<env>/<backbone>" if present; every atari100k-<game>
takes the preset atari100k), then the flags given on the command line (`--env-options` adds to
the preset's env options). The resolved config is saved as `config.json` in the run dir, next to
tensorboard logs, `checkpoint.pt` and, at the end, `eval.json`. Checkpoints are plain tensors and
containers written with `torch.save` and read with `torch.load(weights_only=True)`, so opening one
never runs code from the file (see `agents.run.load_checkpoint`).

From Python, `train(**settings)` (re-exported as `memrl.train`) takes the same settings as keyword
arguments; `main` only parses the command line into them and turns errors into exit codes.

Data-parallel PPO: started by torchrun (detected from its RANK, WORLD_SIZE and LOCAL_RANK
variables), every process trains on `--num-envs / WORLD_SIZE` envs seeded with
`seed + rank * RANK_SEED_OFFSET`, on `cuda:LOCAL_RANK` when the device is CUDA (nccl) and on
the CPU otherwise (gloo); see `agents.ppo` for what is averaged. Rank 0 alone writes the run
dir and evaluates.

    torchrun --standalone --nproc_per_node 4 -m agents.train --backbone s5 --env memory-rewrite
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium
import torch

from agents.dagger import DAggerConfig, DAggerTrainer
from agents.dreamer import DreamerConfig, DreamerTrainer
from agents.networks import is_supported_observation_space
from agents.ppo import PPOConfig, PPOTrainer
from agents.run import (
    ArtifactError,
    CheckpointError,
    CheckpointWriteFailed,
    Distributed,
    TrainingDiverged,
    evaluate,
    load_checkpoint,
    seed_everything,
    write_json,
)
from envs.atari import AtariVectorEnv, check_atari_env, is_atari_name
from envs.gymnasium_adapter import GymnasiumVectorEnv, resolve_env_id
from envs.maniskill import ManiSkillUnavailable, is_maniskill_name, make_maniskill_env, maniskill_env_id
from envs.registry import env_names, make_env
from memory import BACKBONES

AGENTS = {"ppo": (PPOConfig, PPOTrainer), "dreamer": (DreamerConfig, DreamerTrainer),
          "dagger": (DAggerConfig, DAggerTrainer)}
"""agent name -> (config dataclass, trainer class); the trainers share one shape. DAgger imitates the env's
privileged oracle (no reward): a diagnostic of what a memory can learn, and a start for PPO (`--init-from`)."""
AgentConfig = PPOConfig | DreamerConfig | DAggerConfig
"""The config of any agent in AGENTS."""


@dataclass
class RunConfig:
    """What to train, where and for how long."""

    agent: str = field(default="ppo", metadata={"help": f"agent: {', '.join(AGENTS)}"})
    backbone: str = field(default="s5", metadata={"help": "memory backbone (see memory.BACKBONES)"})
    env: str = field(default="memory-rewrite", metadata={"help": "env short name (see envs.registry), atari100k-<game> (see envs.atari), maniskill-<task> (see envs.maniskill), a gymnasium id or 'module:EnvId' (imports module first, e.g. popgym:popgym-RepeatPreviousEasy-v0)"})
    env_options: dict = field(default_factory=dict, metadata={"help": "env keyword arguments as JSON: a memrl env's settings, gymnasium.make's kwargs or envs.atari.AtariOptions, e.g. '{\"clip_rewards\": true}'"})
    seed: int = field(default=1, metadata={"help": "seed for torch, numpy, python and the envs"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda"})
    total_steps: int = field(default=1_000_000, metadata={"help": "env steps to train for (all envs together)"})
    num_envs: int = field(default=64, metadata={"help": "parallel envs"})
    eval_episodes: int = field(default=200, metadata={"help": "episodes of the final evaluation (0 skips it)"})
    eval_deterministic: bool = field(default=True, metadata={"help": "evaluate with the most likely action instead of sampling"})
    torch_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 keeps torch's default)"})
    init_from: str = field(default="", metadata={"help": "start from the weights in this run dir's last checkpoint (same network and backbone: ppo and dagger share one; fresh optimiser and counters): fine-tuning, curricula ('' starts from scratch)"})


# Presets: overrides of RunConfig and the agent's config fields, by env and optionally "<env>/<backbone>";
# presets of an agent other than PPO are named "<agent>:<name>" (e.g. "dreamer:tmaze").
# Atari100k evaluates with sampled actions, as DreamerV3 and the published PPO baselines do: a greedy
# policy can stall (never pressing FIRE) until the 27k-step limit. The memory tasks evaluate greedily.
_COLOR_CUBES = {"total_steps": 3_000_000, "num_envs": 64, "num_steps": 64, "hidden_dim": 64, "learning_rate": 1e-3,
                "num_minibatches": 2, "ent_coef": 0.01, "encoder_width": 256, "bootstrap_truncated": False}
PRESETS: dict[str, dict] = {
    "default": {},
    # memory-retention is Ni et al.'s passive T-maze with a 100-cell corridor: every episode lasts exactly
    # 101 steps, so 101-step windows hold whole episodes and backpropagation reaches from the turn back to
    # the cue; a small entropy bonus lets the policy become the near-deterministic walk the horizon demands,
    # and a constant learning rate keeps learning the cue once the walk is learnt (about half-way).
    "memory-retention": {"total_steps": 1_200_000, "num_envs": 32, "num_steps": 101, "hidden_dim": 64,
                         "learning_rate": 1e-3, "anneal_lr": False, "num_minibatches": 2, "ent_coef": 0.001},
    "tmaze": {"total_steps": 400_000, "num_envs": 32, "num_steps": 64, "hidden_dim": 64,
              "learning_rate": 1e-3, "num_minibatches": 2, "ent_coef": 0.01},
    "memory-rewrite": {"total_steps": 400_000, "num_envs": 64, "num_steps": 64, "hidden_dim": 64,
                       "learning_rate": 1e-3, "num_minibatches": 2, "ent_coef": 0.01},
    # Endless T-Maze, 10 corridors of uniform length 1-10 under the authors' junction rule (forward at the
    # junction fails, and the junction is not in the observation): the memory-rewrite setting (64-step windows,
    # hidden 64, learning rate 1e-3) over 5M steps reaches >= 0.95 greedy success, where the defaults (128-step
    # windows, hidden 128, 3e-4) stop near 0.9 at 3M (benchmarks/hard_tasks.md).
    "endless-tmaze-uniform-l10-n10": {"total_steps": 5_000_000, "num_envs": 64, "num_steps": 64, "hidden_dim": 64,
                                      "learning_rate": 1e-3, "num_minibatches": 2, "ent_coef": 0.01},
    # Color-Cubes: the first observation's map must be matched against the target colour and the result kept.
    # Two tanh layers cannot learn that conjunction from one observation per episode in a few million steps
    # (even cloning the oracle stalls), two ReLU layers of 256 can; and a timeout, the task's failure with no
    # clock in the observation, must end the return: bootstrapped, it lets PPO settle on stalling until the
    # limit (success 0.04). See benchmarks/hard_tasks.md.
    "color-cubes-trivial": _COLOR_CUBES,
    "color-cubes": _COLOR_CUBES,
    # Few samples, many updates: 16 envs x 16 steps = 256 steps per update, each rollout trained on 8 times as
    # one minibatch at a large learning rate. With the default s5 backbone it passes 0.9 rolling success on
    # memory-rewrite in fewer env steps than sb3-contrib's RecurrentPPO, and in less wall time
    # (benchmarks/sample_efficiency.md); the budget is sized for that task: give --total-steps on others.
    "sample-efficient": {"total_steps": 24_576, "num_envs": 16, "num_steps": 16, "hidden_dim": 64,
                         "learning_rate": 3e-3, "num_minibatches": 1, "update_epochs": 8},
    "smoke": {"total_steps": 2_048, "num_envs": 8, "num_steps": 32, "hidden_dim": 16, "num_minibatches": 2,
              "update_epochs": 2, "eval_episodes": 8, "checkpoint_every": 2},
    # 8 envs x 125 steps = 1,000 steps per update: the 100k budget is exactly 100 updates.
    "atari100k": {"total_steps": 100_000, "num_envs": 8, "num_steps": 125, "hidden_dim": 256, "learning_rate": 2.5e-4,
                  "num_minibatches": 4, "update_epochs": 4, "clip_coef": 0.1, "ent_coef": 0.01, "eval_episodes": 100,
                  "eval_deterministic": False, "env_options": {"clip_rewards": True}},
    "dreamer:default": {"num_envs": 16},
    "dagger:default": {},
    # The Color-Cubes network (as PPO's preset builds it, so a DAgger run can start a PPO run), 16 gradient steps
    # per 4,096-step window: imitating Medium's oracle this way takes s5 to 0.55-0.59 greedy success (hard_tasks.md).
    "dagger:color-cubes": {"total_steps": 1_228_800, "num_envs": 64, "num_steps": 64, "hidden_dim": 64,
                           "learning_rate": 1e-3, "num_minibatches": 4, "update_epochs": 4, "encoder_width": 256},
    # The same with a state of 128, a torso of two ReLU layers of 512 after the memory and twice the budget: with
    # it a student learns to find the remembered target colour's cell in a later map, which every student of the
    # narrower network misses. A gru student reaches 0.75-0.79 on Medium (3 seeds), above what the first map
    # alone allows (0.711), and loses 0.06-0.09 when the later maps are hidden (hard_tasks.md).
    "dagger:color-cubes-wide": {"total_steps": 2_457_600, "num_envs": 64, "num_steps": 64, "hidden_dim": 128,
                                "head_width": 512, "learning_rate": 1e-3, "num_minibatches": 4, "update_epochs": 4,
                                "encoder_width": 256},
    # memory-rewrite with the sample-efficient setting's many updates per sample: s5 imitates the oracle perfectly
    # (teacher agreement 1.00) by 3-8k env steps on seeds 1-4, half of this budget.
    "dagger:memory-rewrite": {"total_steps": 12_288, "num_envs": 16, "num_steps": 16, "hidden_dim": 64,
                              "learning_rate": 3e-3, "num_minibatches": 1, "update_epochs": 8},
    # The passive T-maze (Ni et al.) at L = 100, PPO's memory-retention network and windows (one window = one
    # episode), with the loss summed over each window: the one turn per episode is what the student must learn.
    # s5 imitates the oracle perfectly from update 145 (seed 1) or 52 (seed 2) of 372, lru from 26; with the per-step
    # average s5 stays at chance (benchmarks/studies/tmaze-passive-l500/README.md). For L = 500, fine-tune such a
    # student (--init-from) with --num-steps 501: from scratch it does not learn the turn there.
    "dagger:memory-retention": {"total_steps": 1_200_000, "num_envs": 32, "num_steps": 101, "hidden_dim": 64,
                                "learning_rate": 1e-3, "num_minibatches": 2, "sum_loss_over_time": True},
    "dagger:smoke": {"total_steps": 2_048, "num_envs": 8, "num_steps": 32, "hidden_dim": 16, "num_minibatches": 2,
                     "update_epochs": 2, "eval_episodes": 8, "checkpoint_every": 2},
    # DreamerV3's Atari100k setting (arXiv 2301.04104v1): model size S (GRU and MLP widths 512, CNN depth 32,
    # 2-layer MLPs, 32 x 32 latents), train ratio 1024, the replay value loss, lives unused, the RSSM for the GRU.
    "dreamer:atari100k": {"total_steps": 100_000, "num_envs": 1, "replay_capacity": 100_000, "eval_episodes": 100,
                          "eval_deterministic": False, "train_ratio": 1024, "hidden_dim": 512, "mlp_units": 512,
                          "mlp_layers": 2, "decoder_channels": 32, "image_network": "dreamerv3", "input_layer": True,
                          "replay_value_loss": 0.3, "env_options": {"life_loss": False}},
    "dreamer:atari100k/gru": {"world_model": "rssm"},
    "dreamer:tmaze": {"total_steps": 15_000, "num_envs": 8, "hidden_dim": 32, "encoder_dim": 32,
                                 "mlp_units": 32, "mlp_layers": 1, "num_latents": 4, "num_classes": 4,
                                 "reward_bins": 63, "batch_size": 8, "batch_length": 32, "train_ratio": 128,
                                 "prefill": 1000, "world_model_lr": 3e-3, "actor_lr": 1e-3, "critic_lr": 1e-3,
                                 "actor_entropy": 3e-3, "replay_capacity": 100_000, "checkpoint_every": 500},
    "dreamer:smoke": {"total_steps": 512, "num_envs": 4, "hidden_dim": 16, "encoder_dim": 16, "mlp_units": 16,
                      "mlp_layers": 1, "num_latents": 4, "num_classes": 4, "reward_bins": 31, "batch_size": 4,
                      "batch_length": 8, "train_ratio": 8, "prefill": 64, "imagination_horizon": 5,
                      "replay_capacity": 4_000, "eval_episodes": 8, "checkpoint_every": 8},
}


NUMBER = (int, float)
EVAL_FIELDS = {"success_rate": NUMBER, "return_mean": NUMBER, "return_std": NUMBER, "episodes": int,
               "global_step": int, "train_wall_time_seconds": NUMBER}
"""What every eval.json holds (studies read it back with `agents.run.read_json`)."""
CONFIG_FIELDS = {"preset": str, "run.agent": str, "run.backbone": str, "run.env": str, "run.num_envs": int,
                 "run.env_options": dict}
"""What every config.json holds, as far as the studies and probes read it."""

RANK_SEED_OFFSET = 10_007
"""Under torchrun, rank r seeds its envs, torch, numpy and python with `seed + r * RANK_SEED_OFFSET`."""


class UsageError(ValueError):
    """Bad input from the command line: reported in one sentence, exit code 2."""


def _config_fields():
    """RunConfig's fields, then every agent's; a name two agents share (gamma, hidden_dim, ...) appears once."""
    fields, seen = [(RunConfig, f) for f in dataclasses.fields(RunConfig)], set()
    for config_class, _ in AGENTS.values():
        for config_field in dataclasses.fields(config_class):
            if config_field.name not in seen:
                fields.append((config_class, config_field))
                seen.add(config_field.name)
    return fields


def parse_json_object(text: str) -> dict:
    """argparse type for a JSON object argument (an ArgumentTypeError names what was wrong)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train-agent",
        description="Train a memrl agent with a memory backbone; logs, checkpoints and eval.json go to the run dir.",
    )
    parser.add_argument("--preset", default="auto",
                        help=f"hyperparameter preset: auto, {', '.join(PRESETS)} (default auto: the preset named like the env)")
    parser.add_argument("--run-dir", default=None, help="run directory (default runs/{env}__{agent}__{backbone}__{seed}__{time})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    for owner, config_field in _config_fields():
        default = config_field.default if config_field.default is not dataclasses.MISSING else config_field.default_factory()
        options = {"default": None, "help": f"{config_field.metadata['help']} (default {default!r})"}
        flag = "--" + config_field.name.replace("_", "-")
        if isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, dict):
            options["type"] = parse_json_object
        elif config_field.name == "target_kl":
            options["type"] = _optional_float
        else:
            options["type"] = type(default)
        parser.add_argument(flag, **options)
    return parser


def resolve_config(args: argparse.Namespace, distributed: Distributed = Distributed()
                   ) -> tuple[RunConfig, AgentConfig, str]:
    """Defaults < preset < explicit flags; validates names and budgets."""
    explicit = {f.name: getattr(args, f.name) for _, f in _config_fields() if getattr(args, f.name) is not None}
    env_name = explicit.get("env", RunConfig.env)
    backbone = explicit.get("backbone", RunConfig.backbone)
    agent = explicit.get("agent", RunConfig.agent)
    if agent not in AGENTS:
        raise UsageError(f"unknown agent {agent!r}; choose one of: {', '.join(AGENTS)}")
    prefix = "" if agent == "ppo" else f"{agent}:"
    if args.preset == "auto":
        family = "atari100k" if is_atari_name(env_name) else env_name
        candidates = (f"{prefix}{family}", f"{prefix}{family}/{backbone}")
        preset_names = [name for name in candidates if name in PRESETS] or [f"{prefix}default"]
    elif f"{prefix}{args.preset}" in PRESETS:
        preset_names = [f"{prefix}{args.preset}"]
    else:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of: auto, {', '.join(PRESETS)}")
    values: dict = {}
    for name in preset_names:
        values.update(PRESETS[name])
    env_options = {**values.get("env_options", {}), **explicit.get("env_options", {})}
    values.update(explicit)
    values["env_options"] = env_options
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    config_class = AGENTS[agent][0]
    agent_fields = {f.name for f in dataclasses.fields(config_class)}
    foreign = sorted(name for name in explicit if name not in run_fields | agent_fields)
    if foreign:
        raise UsageError(f"--{foreign[0].replace('_', '-')} is not a setting of the {agent} agent; "
                         f"see train-agent --help for its options")
    run_config = RunConfig(**{k: v for k, v in values.items() if k in run_fields})
    agent_config = config_class(**{k: v for k, v in values.items() if k in agent_fields})
    validate(run_config, agent_config, distributed)
    return run_config, agent_config, "+".join(preset_names)


def validate(run: RunConfig, agent_config: AgentConfig, distributed: Distributed = Distributed()) -> None:
    if run.agent not in AGENTS:
        raise UsageError(f"unknown agent {run.agent!r}; choose one of: {', '.join(AGENTS)}")
    if run.backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {run.backbone!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    if is_atari_name(run.env):
        try:
            check_atari_env(run.env, run.env_options)
        except (ValueError, ImportError) as error:
            raise UsageError(str(error)) from None
    elif is_maniskill_name(run.env):
        try:
            maniskill_env_id(run.env)
        except ValueError as error:
            raise UsageError(str(error)) from None
    elif run.env not in env_names():
        if ":" not in run.env and run.env not in gymnasium.registry:
            raise UsageError(
                f"unknown env {run.env!r}; choose a memrl env ({', '.join(env_names())}), atari100k-<game>, "
                "maniskill-<task>, a registered gymnasium id or 'module:EnvId'"
            )
        try:
            resolve_env_id(run.env)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if run.device not in ("auto", "cpu", "cuda") and not run.device.startswith("cuda:"):
        raise UsageError(f"device must be auto, cpu or cuda, got {run.device!r}")
    if run.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {run.device!r} was asked for but torch sees no CUDA device; use --device cpu")
    for name in ("total_steps", "num_envs"):
        if getattr(run, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(run, name)}")
    if run.eval_episodes < 0:
        raise UsageError(f"--eval-episodes must be 0 or more, got {run.eval_episodes}")
    if distributed.torchrun and run.agent != "ppo":
        raise UsageError(f"data-parallel training under torchrun is implemented for --agent ppo only, not {run.agent}")
    if run.num_envs % distributed.world_size != 0:
        raise UsageError(f"--num-envs ({run.num_envs}) must be divisible by the number of torchrun processes "
                         f"({distributed.world_size}): each process steps an equal share of the envs")
    if isinstance(agent_config, DreamerConfig):
        try:
            agent_config.validate()
        except ValueError as error:
            raise UsageError(str(error)) from None
        return
    ppo = agent_config
    for name in ("num_steps", "num_minibatches", "update_epochs", "hidden_dim", "checkpoint_every"):
        if getattr(ppo, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(ppo, name)}")
    if ppo.learning_rate <= 0:
        raise UsageError(f"--learning-rate must be positive, got {ppo.learning_rate}")
    if isinstance(ppo, DAggerConfig) and not 0.0 <= ppo.teacher_prob <= 1.0:
        raise UsageError(f"--teacher-prob must be a probability in [0, 1], got {ppo.teacher_prob}")
    envs_per_process = run.num_envs // distributed.world_size
    if envs_per_process % ppo.num_minibatches != 0:
        envs = (f"--num-envs ({run.num_envs})" if distributed.world_size == 1 else
                f"the envs per process ({run.num_envs} / {distributed.world_size} = {envs_per_process})")
        raise UsageError(
            f"{envs} must be divisible by --num-minibatches ({ppo.num_minibatches}): "
            "minibatches are slices of the env axis"
        )


def make_training_env(name: str, num_envs: int, device: torch.device, seed: int, options: dict | None = None,
                      evaluation: bool = False):
    """A memrl env by short name, an Atari100k game (`evaluation` plays whole games with raw rewards),
    a ManiSkill task (maniskill-<task>) or any gymnasium id (or 'module:EnvId') through the vector adapter; `options` are
    the env's keyword arguments."""
    options = options or {}
    if is_atari_name(name):
        return AtariVectorEnv(name, num_envs, device, seed, evaluation, **options)
    if is_maniskill_name(name):
        return make_maniskill_env(name, num_envs, device, seed, **options)
    if name in env_names():
        return make_env(name, num_envs=num_envs, device=device, seed=seed, **options)
    return GymnasiumVectorEnv(name, num_envs=num_envs, device=device, seed=seed, **options)


def default_run_dir(run: RunConfig) -> Path:
    env = run.env.replace("/", "_")
    return Path("runs") / f"{env}__{run.agent}__{run.backbone}__{run.seed}__{int(time.time())}"


def check_spaces(env, agent: str) -> None:
    """Refuse, in one sentence, an env whose spaces the agent cannot handle (Dict observations: PPO only)."""
    obs_space, action_space = env.single_observation_space, env.single_action_space
    if agent != "ppo" and isinstance(obs_space, gymnasium.spaces.Dict):
        raise UsageError(
            f"the {agent} agent takes one Box observation, and this env gives a Dict ({', '.join(obs_space.keys())}); "
            "use --agent ppo, or env options that give one tensor "
            "(ManiSkill: --env-options '{\"observation\": \"rgb\"}')"
        )
    obs_ok = is_supported_observation_space(obs_space)
    action_ok = isinstance(action_space, gymnasium.spaces.Discrete) or (
        isinstance(action_space, gymnasium.spaces.Box) and len(action_space.shape) == 1
    )
    if not (obs_ok and action_ok):
        raise UsageError(
            f"env spaces {obs_space} -> {action_space} are not supported; memrl agents take Box observations "
            "(flat vectors or [H, W, C] images, or PPO a Dict of those) and Discrete or flat Box actions"
        )


def configs_from_checkpoint(checkpoint: dict, run_dir: Path) -> tuple[RunConfig, AgentConfig]:
    """The run and agent configs a checkpoint was trained with; CheckpointError when it holds none that fits."""
    try:
        run = RunConfig(**checkpoint["config"]["run"])
        if run.agent not in AGENTS:
            raise CheckpointError(f"the checkpoint in {run_dir} is of agent {run.agent!r}, which this memrl does not "
                                  f"have (it has: {', '.join(AGENTS)})")
        return run, AGENTS[run.agent][0](**checkpoint["config"][run.agent])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"the checkpoint in {run_dir} holds no train-agent config this memrl can read "
                              f"({type(error).__name__}: {error})") from None


def apply_checkpoint(restore, checkpoint: dict, run: RunConfig, run_dir: Path, mismatch: str | None = None) -> None:
    """`restore(checkpoint)` (a trainer's restore or an agent's load_state_dict); CheckpointError, in one
    sentence, when the checkpoint's tensors do not fit: `mismatch` says what, by default that they do not
    fit the agent the checkpoint's own config describes."""
    try:
        restore(checkpoint)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
        reason = " ".join(str(error).split())[:240] or type(error).__name__
        mismatch = mismatch or (f"the checkpoint in {run_dir} does not fit the {run.agent} + {run.backbone} agent "
                                "its config describes")
        raise CheckpointError(f"{mismatch} ({reason})") from None


def initialise_from(agent: torch.nn.Module, source_dir: Path, run: RunConfig) -> None:
    """Load the weights of `source_dir`'s last checkpoint into the new run's `agent` (only the weights:
    the optimiser, counters and episodes start afresh); UsageError when that run trained another network
    (PPO and DAgger share theirs) or backbone, CheckpointError when its tensors do not fit (e.g. an env with
    another observation size)."""
    checkpoint = load_checkpoint(source_dir)
    source, _ = configs_from_checkpoint(checkpoint, source_dir)
    same_network = AGENTS[source.agent][1].network == AGENTS[run.agent][1].network
    if not same_network or source.backbone != run.backbone:
        raise UsageError(f"--init-from {source_dir} holds a {source.agent} + {source.backbone} agent; this run trains "
                         f"{run.agent} + {run.backbone}, and only the same network (ppo and dagger share one) and "
                         "backbone can start from its weights")
    apply_checkpoint(lambda payload: agent.load_state_dict(payload["agent"]), checkpoint, run, source_dir,
                     mismatch=f"the weights in {source_dir} (trained on {source.env}) do not fit this run's agent on "
                              f"{run.env}: the env's observation or action space, or the agent's settings, differ")


def load_trained_agent(run_dir: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The agent of a `train-agent` run dir with its last checkpoint's weights (eval mode, on `device`)
    and the run's config; CheckpointError (one sentence) when the run dir holds no usable checkpoint."""
    checkpoint = load_checkpoint(run_dir)
    run, agent_config = configs_from_checkpoint(checkpoint, run_dir)
    spaces = make_training_env(run.env, 1, torch.device(device), run.seed, run.env_options)
    agent = AGENTS[run.agent][1].build_agent(agent_config, spaces.single_observation_space,
                                             spaces.single_action_space, run.backbone)
    apply_checkpoint(lambda payload: agent.load_state_dict(payload["agent"]), checkpoint, run, run_dir)
    return agent.to(device).eval(), run


def resource_usage(agent: torch.nn.Module, device: torch.device) -> dict:
    """Trainable parameters and peak memory in MiB: CUDA memory allocated on a GPU, else the
    process's peak resident set size (which includes the Python interpreter and torch)."""
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
    else:
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    return {"parameters": sum(p.numel() for p in agent.parameters() if p.requires_grad),
            "peak_memory_mb": round(peak_bytes / 2**20, 1)}


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns: where the run lives and how it ended."""

    run_dir: Path
    global_step: int
    train_success_rate: float
    """Mean success of the last 100 training episodes (nan before any ended)."""
    eval: dict | None
    """The content of eval.json; None when eval_episodes is 0 (and on torchrun ranks other than 0)."""


def _accepted_types(default) -> tuple[type, ...]:
    """The Python types a setting with this default takes: ints for floats too, never a bool for an int."""
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    if default is None:  # target_kl: a number or None
        return (int, float, type(None))
    return (type(default),)


def train(*, preset: str = "auto", run_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
          distributed: Distributed | None = None, **settings) -> TrainResult:
    """Train one run, or continue one with `resume=True`, exactly as `train-agent` does (the CLI calls this).

    Keyword arguments are train-agent's flags with underscores: `agent`, `backbone`, `env`,
    `total_steps`, `num_envs`, `seed`, `env_options={...}`, `backbone_options={...}`, every PPO or
    Dreamer hyperparameter... A setting left out takes the preset's value, then the default; on
    resume the checkpoint's config is used and only `total_steps` may change. Bad settings raise
    UsageError (a ValueError) in one sentence, broken run dirs ArtifactError, non-finite losses or
    weights TrainingDiverged, a failed checkpoint write CheckpointWriteFailed.
    """
    defaults = {config_field.name: (config_field.default if config_field.default is not dataclasses.MISSING
                                    else config_field.default_factory()) for _, config_field in _config_fields()}
    for name, value in settings.items():
        if name not in defaults:
            raise UsageError(f"unknown setting {name!r}; the settings are train-agent's flags with underscores "
                             "(see train-agent --help)")
        accepted = _accepted_types(defaults[name])
        wrong_type = not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted)
        if value is not None and wrong_type:
            raise UsageError(f"{name} must be {' or '.join(kind.__name__ for kind in accepted)}, got {value!r}")
    args = argparse.Namespace(preset=preset, run_dir=run_dir, resume=resume, quiet=quiet,
                              **{name: settings.get(name) for name in defaults})
    distributed = distributed or Distributed()
    try:
        return run_training(args, distributed)
    finally:
        distributed.stop()


def run_training(args: argparse.Namespace, distributed: Distributed = Distributed()) -> TrainResult:
    """One run from parsed train-agent arguments (`train` builds them from keyword arguments)."""
    if args.resume:
        if args.run_dir is None:
            raise UsageError("--resume needs --run-dir: the run directory to continue")
        run_dir = Path(args.run_dir)
        checkpoint = load_checkpoint(run_dir)
        run, agent_config = configs_from_checkpoint(checkpoint, run_dir)
        for name in ("agent", "backbone", "env"):
            asked = getattr(args, name)
            if asked is not None and asked != getattr(run, name):
                raise UsageError(f"the checkpoint in {run_dir} is of a {run.agent} + {run.backbone} run on {run.env}, "
                                 f"not --{name} {asked}; resume without --{name} or pick that run's dir")
        if args.total_steps is not None:
            run = dataclasses.replace(run, total_steps=args.total_steps)
        validate(run, agent_config, distributed)
        preset = checkpoint["config"].get("preset", "unknown")
    else:
        run, agent_config, preset = resolve_config(args, distributed)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(run)
        checkpoint = None
    device = torch.device("cuda" if run.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if run.device == "auto" else run.device))
    if distributed.torchrun and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    if run.torch_threads > 0:
        torch.set_num_threads(run.torch_threads)
    distributed.start(device)
    seed = run.seed + distributed.rank * RANK_SEED_OFFSET
    seed_everything(seed)
    try:
        env = make_training_env(run.env, run.num_envs // distributed.world_size, device, seed, run.env_options)
    except (TypeError, ValueError, ManiSkillUnavailable) as error:
        raise UsageError(f"cannot build the env {run.env!r}: {error}") from None
    check_spaces(env, run.agent)
    config = {"run": dataclasses.asdict(run), run.agent: dataclasses.asdict(agent_config), "preset": preset}
    trainer_class = AGENTS[run.agent][1]
    data_parallel = {"distributed": distributed} if distributed.torchrun else {}
    try:
        trainer = trainer_class(agent_config, env, run.total_steps, device, run.backbone, run_dir=run_dir,
                                progress=not args.quiet, **data_parallel)
    except (TypeError, ValueError) as error:
        raise UsageError(f"cannot build the agent: {error}") from None
    if checkpoint is not None:
        apply_checkpoint(trainer.restore, checkpoint, run, run_dir)
    else:
        if run.init_from:
            initialise_from(trainer.agent, Path(run.init_from), run)
        if distributed.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", config)
    if distributed.is_main:
        processes = f", {distributed.world_size} processes" if distributed.torchrun else ""
        print(f"train-agent: {run.agent} + {run.backbone} on {run.env} ({device}{processes}), preset {preset}, "
              f"run dir {run_dir}", file=sys.stderr)
        if trainer.planned_steps > run.total_steps:
            print(f"train-agent: --total-steps {run.total_steps:,} rounded up to {trainer.planned_steps:,}: "
                  f"{trainer.step_unit}", file=sys.stderr)
    trainer.train(checkpoint_extra={"config": config})
    evaluation = None
    if run.eval_episodes > 0 and distributed.is_main:
        eval_env = make_training_env(run.env, run.eval_episodes, device, run.seed + 1_000_003, run.env_options,
                                     evaluation=True)
        evaluation = evaluate(trainer.agent, eval_env, deterministic=run.eval_deterministic)
        evaluation.update({"global_step": trainer.global_step, "train_wall_time_seconds": trainer.elapsed_seconds,
                           **resource_usage(trainer.agent, device)})
        write_json(run_dir / "eval.json", evaluation)
        print(f"train-agent: eval over {evaluation['episodes']} episodes: success {evaluation['success_rate']:.3f}, "
              f"return {evaluation['return_mean']:.3f} ± {evaluation['return_std']:.3f}", file=sys.stderr)
    return TrainResult(run_dir=run_dir, global_step=trainer.global_step,
                       train_success_rate=trainer.statistics.success_rate(), eval=evaluation)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        train(**vars(args), distributed=Distributed.from_environment())
    except (UsageError, ArtifactError) as error:
        parser.exit(2, f"train-agent: error: {error}\n")
    except (TrainingDiverged, CheckpointWriteFailed) as error:
        parser.exit(1, f"train-agent: stopped: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

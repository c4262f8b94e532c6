"""memrl from Python: the public API in one namespace.

    import memrl

    result = memrl.train(backbone="s5", env="memory-rewrite", total_steps=100_000, seed=1)
    print(result.eval["success_rate"], result.run_dir)
    agent, config = memrl.load_trained_agent(result.run_dir)

`train` takes train-agent's settings as keyword arguments and is what the `train-agent` CLI
calls. The names below are re-exported from `agents`, `memory` and `envs` (imports flow one way:
memrl imports them, none of them imports memrl).
"""

from agents.dagger import DAggerConfig, DAggerTrainer
from agents.dreamer import DreamerAgent, DreamerConfig, DreamerTrainer
from agents.ppo import PPOConfig, PPOTrainer, RecurrentActorCritic
from agents.run import (
    ArtifactError,
    CheckpointError,
    CheckpointWriteFailed,
    TrainingDiverged,
    evaluate,
    load_checkpoint,
)
from agents.train import PRESETS, TrainResult, UsageError, load_trained_agent, make_training_env, train
from envs.registry import env_names, make_env
from memory import BACKBONES, make_backbone, register_backbone

__all__ = [
    "ArtifactError", "BACKBONES", "CheckpointError", "CheckpointWriteFailed", "DAggerConfig", "DAggerTrainer",
    "DreamerAgent", "DreamerConfig", "DreamerTrainer", "PPOConfig", "PPOTrainer", "PRESETS", "RecurrentActorCritic", "TrainResult",
    "TrainingDiverged", "UsageError", "env_names", "evaluate", "load_checkpoint", "load_trained_agent",
    "make_backbone", "make_env", "make_training_env", "register_backbone", "train",
]

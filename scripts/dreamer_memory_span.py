"""Can Dreamer hold a cue longer than its replayed windows? Train it on a passive T-maze and evaluate.

    python -m scripts.dreamer_memory_span --backbone gru --corridor-length 12 --batch-length 4
    python -m scripts.dreamer_memory_span --backbone s5 --corridor-length 12 --batch-length 4 --no-replay-state

The cue is shown at the first step and needed corridor_length steps later; with windows shorter
than that, only the memory stored in the replay (`replay_state`, on by default) carries the cue
into the window that holds the decision. Prints one JSON line: the settings, env steps, updates,
wall seconds and the greedy evaluation (success rate over 200 episodes; chance is 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from agents.dreamer import DreamerConfig, DreamerTrainer
from agents.run import evaluate, seed_everything
from envs.registry import make_env

SMALL_DREAMER = DreamerConfig(
    hidden_dim=32, encoder_dim=32, mlp_units=32, mlp_layers=1, num_latents=4, num_classes=4, reward_bins=63,
    batch_size=32, batch_length=4, train_ratio=64, prefill=1000, imagination_horizon=15, replay_capacity=100_000,
    world_model_lr=3e-3, actor_lr=1e-3, critic_lr=1e-3, actor_entropy=3e-3, checkpoint_every=10**9,
)
"""The CI learning test's small Dreamer with windows of 32 x 4 replayed rows (128 per update)."""

BACKBONE_OPTIONS = {"s5": {"num_layers": 1, "state_size": 16}}


def train_on_tmaze(backbone: str, corridor_length: int, config: DreamerConfig, total_steps: int, seed: int = 0,
                   num_envs: int = 8) -> dict:
    """Train Dreamer on the T-maze with `corridor_length` and return the settings and the evaluation."""
    config = dataclasses.replace(config, backbone_options=BACKBONE_OPTIONS.get(backbone, {}))
    seed_everything(seed)
    env = make_env("tmaze", num_envs=num_envs, seed=seed, corridor_length=corridor_length)
    trainer = DreamerTrainer(config, env, total_steps, torch.device("cpu"), backbone, progress=False)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    eval_env = make_env("tmaze", num_envs=200, seed=seed + 100, corridor_length=corridor_length)
    result = evaluate(trainer.agent, eval_env)
    return {"backbone": backbone, "corridor_length": corridor_length, "batch_length": config.batch_length,
            "batch_size": config.batch_size, "burn_in": config.burn_in, "replay_state": config.replay_state,
            "stored_gradient": config.stored_gradient,
            "seed": seed, "env_steps": trainer.global_step, "updates": trainer.update, "seconds": round(seconds),
            "success_rate": result["success_rate"], "return_mean": result["return_mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="gru")
    parser.add_argument("--corridor-length", type=int, default=12)
    parser.add_argument("--batch-length", type=int, default=4, help="steps per replayed window")
    parser.add_argument("--batch-size", type=int, default=32, help="replayed windows per update")
    parser.add_argument("--burn-in", type=int, default=0)
    parser.add_argument("--replay-state", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--stored-gradient", action=argparse.BooleanOptionalAction, default=False,
                        help="carry gradients across windows through the replay (DreamerConfig.stored_gradient)")
    parser.add_argument("--total-steps", type=int, default=8000)
    parser.add_argument("--train-ratio", type=float, default=64.0)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = dataclasses.replace(SMALL_DREAMER, batch_length=args.batch_length, batch_size=args.batch_size,
                                 burn_in=args.burn_in, replay_state=args.replay_state, train_ratio=args.train_ratio,
                                 stored_gradient=args.stored_gradient)
    print(json.dumps(train_on_tmaze(args.backbone, args.corridor_length, config, args.total_steps, args.seed,
                                    args.num_envs)), flush=True)


if __name__ == "__main__":
    main()

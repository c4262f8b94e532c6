"""Time the Dreamer agent's world-model updates and imagination per backbone at Atari shapes.

    python -m scripts.bench_dreamer --device cuda
    python -m scripts.bench_dreamer --device cpu --repeats 1 --batch-size 4   # a quick CPU look
    python -m scripts.bench_dreamer --preset atari100k --backbones gru s5 --repeats 1   # the train-agent preset

A replayed batch is `batch_size` x `batch_length` windows of 64x64x3 uint8 images with 18
discrete actions (DreamerV3's Atari setting: 16 x 64, 32 x 32 latents), filled with random data
and 1% episode starts. Per backbone (parallel world model) and for the GRU RSSM it reports:
- world-model update: loss, backward and Adam step on the batch -> replayed steps per second;
- imagination: the backbone state at every replayed row plus the H-step rollout with the
  actor from all B x T rows, without gradients -> imagined steps (rows x H) per second;
- the actor-critic update (imagination, returns, both losses, backward, steps) in ms.
Median of the timed calls after one warm-up; the markdown table goes to benchmarks/dreamer.md.

`--preset atari100k` instead times train-agent's `dreamer:atari100k` configuration (with its
per-backbone world model) and prints, per backbone, the trainable parameters, the seconds of
one update (world model + actor-critic), of one acting step (policy_step on one env) and the
projected hours of a 100k-step game: 100k x (updates per env step x update + acting step),
env emulation not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import subprocess
from pathlib import Path

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F

from agents.dreamer import DreamerAgent, DreamerConfig
from agents.train import PRESETS
from agents.run import write_atomically
from scripts.bench_backbones import describe_device, time_call

IMAGE_SHAPE = (64, 64, 3)
NUM_ACTIONS = 18


def random_batch(batch_size: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    is_first = torch.rand(batch_size, length, device=device) < 0.01
    return {
        "obs": torch.randint(0, 256, (batch_size, length, *IMAGE_SHAPE), dtype=torch.uint8, device=device),
        "action": F.one_hot(torch.randint(0, NUM_ACTIONS, (batch_size, length), device=device), NUM_ACTIONS).float(),
        "is_first": is_first,
        "reward": torch.randn(batch_size, length, device=device),
        "terminated": torch.cat([is_first[:, 1:], torch.zeros_like(is_first[:, :1])], 1),
    }


def benchmark(backbone: str, world_model: str, config: DreamerConfig, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    config = dataclasses.replace(config, world_model=world_model)
    observation_space = gymnasium.spaces.Box(0, 255, IMAGE_SHAPE, dtype=np.uint8)
    agent = DreamerAgent(observation_space, gymnasium.spaces.Discrete(NUM_ACTIONS), backbone, config).to(device)
    world_model_optimizer = torch.optim.Adam(agent.world_model.parameters(), lr=config.world_model_lr)
    actor_critic_optimizer = torch.optim.Adam([*agent.actor.parameters(), *agent.critic.parameters()], lr=config.actor_lr)
    batch = random_batch(config.batch_size, config.batch_length, device)
    rows = config.batch_size * config.batch_length

    def world_model_update():
        # The RSSM collects the start states on its way; the parallel model's walk is timed with imagination.
        loss, _, _ = agent.world_model.loss(batch, collect_states=False)
        world_model_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world_model_optimizer.step()

    with torch.no_grad():
        _, _, start = agent.world_model.loss(batch)

    def imagine_from_batch():
        with torch.no_grad():
            if world_model == "parallel":  # the extra walk that collects the state carried into every row
                inputs = agent.world_model.sequence_input(start["latents"], batch["action"])
                states = agent.world_model.states_before_each_row(inputs, batch["is_first"])
            else:  # the RSSM's posterior walk has collected them already
                states = start["states"]
            agent.world_model.imagine(
                lambda features: agent.actor(features).sample(), start["deter"].flatten(0, 1),
                start["latents"].flatten(0, 1), {key: value.flatten(0, 1) for key, value in states.items()},
                batch["is_first"].flatten(0, 1), config.imagination_horizon,
            )

    def actor_critic_update():
        actor_loss, critic_loss, _ = agent.actor_critic_loss(start, batch)
        actor_critic_optimizer.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        actor_critic_optimizer.step()

    world_model_seconds = time_call(world_model_update, device, repeats)
    imagination_seconds = time_call(imagine_from_batch, device, repeats)
    actor_critic_seconds = time_call(actor_critic_update, device, repeats)
    return {
        "backbone": backbone,
        "world_model": world_model,
        "parameters": sum(p.numel() for p in agent.world_model.parameters()),
        "world_model_ms": world_model_seconds * 1e3,
        "world_model_steps_per_second": rows / world_model_seconds,
        "imagination_ms": imagination_seconds * 1e3,
        "imagination_steps_per_second": rows * config.imagination_horizon / imagination_seconds,
        "actor_critic_ms": actor_critic_seconds * 1e3,
    }


def preset_config(preset: str, backbone: str) -> DreamerConfig:
    """The DreamerConfig train-agent resolves for `dreamer:<preset>` and `backbone` (without flags)."""
    names = {field.name for field in dataclasses.fields(DreamerConfig)}
    values = {**PRESETS[f"dreamer:{preset}"], **PRESETS.get(f"dreamer:{preset}/{backbone}", {})}
    return DreamerConfig(**{key: value for key, value in values.items() if key in names})


def benchmark_preset(preset: str, backbone: str, device: torch.device, repeats: int, total_steps: int) -> dict:
    """Parameters, seconds per update and per acting step, and projected hours for `total_steps`."""
    config = preset_config(preset, backbone)
    row = benchmark(backbone, config.world_model, config, device, repeats)
    torch.manual_seed(0)
    observation_space = gymnasium.spaces.Box(0, 255, IMAGE_SHAPE, dtype=np.uint8)
    agent = DreamerAgent(observation_space, gymnasium.spaces.Discrete(NUM_ACTIONS), backbone, config).to(device)
    obs = torch.randint(0, 256, (1, *IMAGE_SHAPE), dtype=torch.uint8, device=device)
    is_first = torch.zeros(1, dtype=torch.bool, device=device)
    state = agent.initial_state(1, device)
    acting_seconds = time_call(lambda: agent.policy_step(obs, state, is_first), device, max(repeats, 20))
    update_seconds = (row["world_model_ms"] + row["actor_critic_ms"]) / 1e3
    updates_per_env_step = config.train_ratio / (config.batch_size * config.batch_length)
    trainable = {name: sum(p.numel() for p in module.parameters())
                 for name, module in (("world_model", agent.world_model), ("actor", agent.actor),
                                      ("critic", agent.critic))}
    return {**row, "config": config, "parameters_by_part": trainable, "update_seconds": update_seconds,
            "acting_seconds": acting_seconds, "updates_per_env_step": updates_per_env_step,
            "projected_hours": total_steps * (updates_per_env_step * update_seconds + acting_seconds) / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backbones", nargs="*", default=["gru", "s5", "transformer"],
                        help="backbones for the parallel world model")
    parser.add_argument("--rssm", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the GRU RSSM reference")
    parser.add_argument("--batch-size", type=int, default=16, help="replayed windows per update")
    parser.add_argument("--batch-length", type=int, default=64, help="steps per window")
    parser.add_argument("--horizon", type=int, default=15, help="imagined steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--output", default="benchmarks/dreamer.md", help="markdown file to write")
    parser.add_argument("--preset", default=None, choices=["atari100k"],
                        help="time train-agent's dreamer:<preset> configuration instead and print its table")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_dreamer: --device cuda was asked for but torch sees no CUDA device\n")
    for name in ("batch_size", "batch_length", "horizon", "repeats"):
        if getattr(args, name) <= 0:
            parser.exit(2, f"bench_dreamer: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}\n")
    if args.preset is not None:
        print(f"bench_dreamer --preset {args.preset}, {describe_device(device)}, torch {torch.__version__}, "
              f"load {os.getloadavg()[0]:.1f}")
        print("| backbone | world model | params (world model / actor / critic / total) | s per update "
              "| s per acting step | updates per env step | projected h per 100k-step game |")
        print("|---|---|---|---:|---:|---:|---:|")
        for backbone in args.backbones:
            row = benchmark_preset(args.preset, backbone, device, args.repeats, total_steps=100_000)
            parts = row["parameters_by_part"]
            print(f"| {backbone} | {row['world_model']} | {parts['world_model']:,} / {parts['actor']:,} / "
                  f"{parts['critic']:,} / {sum(parts.values()):,} | {row['update_seconds']:.1f} | "
                  f"{row['acting_seconds']:.4f} | {row['updates_per_env_step']:g} | {row['projected_hours']:,.0f} |",
                  flush=True)
        print(f"load at end {os.getloadavg()[0]:.1f}")
        return
    config = DreamerConfig(batch_size=args.batch_size, batch_length=args.batch_length,
                           imagination_horizon=args.horizon)
    load_at_start = os.getloadavg()[0]
    runs = [(name, "parallel") for name in args.backbones] + ([("gru", "rssm")] if args.rssm else [])
    rows = []
    for backbone, world_model in runs:
        row = benchmark(backbone, world_model, config, device, args.repeats)
        rows.append(row)
        print(f"{backbone:>12} {world_model:>8}  world model {row['world_model_ms']:9.1f} ms "
              f"({row['world_model_steps_per_second']:,.0f} steps/s)  imagination {row['imagination_ms']:9.1f} ms "
              f"({row['imagination_steps_per_second']:,.0f} steps/s)  actor-critic {row['actor_critic_ms']:9.1f} ms",
              flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = (f"python -m scripts.bench_dreamer --device {args.device} --batch-size {args.batch_size} "
               f"--batch-length {args.batch_length} --horizon {args.horizon} --repeats {args.repeats}")
    lines = [
        f"# Dreamer world-model and imagination throughput ({device.type})",
        "",
        f"- device: {describe_device(device)}",
        f"- date: {datetime.date.today().isoformat()}, commit {commit}, torch {torch.__version__}",
        f"- command: `{command}`",
        f"- batch {args.batch_size} x {args.batch_length} of {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} uint8 "
        f"images, {NUM_ACTIONS} actions, horizon {args.horizon}, DreamerConfig defaults otherwise "
        f"(hidden {config.hidden_dim}, {config.num_latents}x{config.num_classes} latents, {config.reward_bins} bins)",
        f"- 1-minute load average at start / end: {load_at_start:.1f} / {os.getloadavg()[0]:.1f} "
        "(on a shared machine, timings taken under load are slower)",
        "- world model: loss + backward + Adam step; imagination: start states of every row + rollout, no "
        "gradients; actor-critic: imagination + returns + losses + backward + step. Median after one warm-up.",
        "",
        "| backbone | world model | WM params | WM update ms | WM train steps/s | imagination ms "
        "| imagination steps/s | actor-critic update ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backbone']} | {row['world_model']} | {row['parameters']:,} | {row['world_model_ms']:.1f} | "
            f"{row['world_model_steps_per_second']:,.0f} | {row['imagination_ms']:.1f} | "
            f"{row['imagination_steps_per_second']:,.0f} | {row['actor_critic_ms']:.1f} |"
        )
    output = Path(args.output)
    write_atomically(output, ("\n".join(lines) + "\n").encode())
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

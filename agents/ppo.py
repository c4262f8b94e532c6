"""Recurrent PPO over any memrl backbone, on batched (GPU-vectorised) environments.

Read top to bottom: config, network, advantages, rollout, update, the training loop.

- A rollout is `[num_envs, num_steps]`, collected with `backbone.step`; the backbone state at
  the start of the rollout is stored with it.
- The update re-runs whole windows through `backbone.forward` with their `is_first` flags,
  so windows cross episode boundaries without padding or splitting; minibatches are slices
  along the env axis.
- Truncation bootstraps from the value of the final observation (computed with the state the
  episode had reached); termination does not. With `bootstrap_truncated`
  off (the Color-Cubes presets), a truncation ends the return as a termination does: where running
  out of time is the task's failure and the observation holds no clock, a bootstrapped timeout is
  worth whatever the critic guesses, and stalling until the limit becomes a policy PPO can settle on.

Data-parallel under torchrun (`distributed` from `Distributed.from_environment()`): each rank
steps its own share of the envs and wraps the agent in DistributedDataParallel for the update's
forward call, so the gradients are averaged over ranks during backward, before clipping and the
optimiser step; DDP's construction broadcasts rank 0's weights, so every rank starts, and stays,
identical. `global_step` counts every rank's env steps; finished episodes are gathered from all
ranks for the statistics; the target-KL test and the NaN test use values averaged over ranks, so
every rank takes the same decision. Rank 0 alone writes tensorboard, checkpoints and the
progress line. A checkpoint holds every rank's env state, carry and RNG state, so resuming with
the same number of processes continues each rank's episodes exactly; with another number, the
weights, optimiser, counters and statistics resume and the envs start new episodes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from agents.networks import (ActionHead, Observation, action_dtype, action_shape, empty_observations, make_encoder,
                             map_observations, orthogonal_init)
from agents.run import (
    Distributed,
    check_finite_parameters,
    EpisodeStatistics,
    flatten,
    ProgressLine,
    TrainingDiverged,
    open_writer,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    to_cpu,
)
from memory import State, make_backbone


@dataclass
class RecurrentPolicyConfig:
    """What PPO and DAgger (`agents.dagger`) share: the network, the training windows and the optimiser."""

    num_steps: int = field(default=128, metadata={"help": "rollout length per env per update (the training window T)"})
    learning_rate: float = field(default=3e-4, metadata={"help": "Adam learning rate"})
    anneal_lr: bool = field(default=True, metadata={"help": "anneal the learning rate linearly to 0 over training"})
    num_minibatches: int = field(default=4, metadata={"help": "minibatches per epoch (slices of the env axis)"})
    update_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    hidden_dim: int = field(default=128, metadata={"help": "encoder width and backbone hidden size"})
    encoder_width: int = field(default=0, metadata={"help": "vector observations: 0 encodes with two tanh layers of hidden_dim; W > 0 with two ReLU layers of width W, then a tanh layer to hidden_dim"})
    head_width: int = field(default=0, metadata={"help": "0: linear policy and value heads on the memory's output; W > 0: both read a shared torso of two ReLU layers of width W on [memory output, encoded observation]"})
    backbone_options: dict = field(default_factory=dict, metadata={"help": "extra backbone options as JSON, e.g. '{\"num_layers\": 1}'"})
    checkpoint_every: int = field(default=10, metadata={"help": "save a checkpoint every N updates (and at the end)"})


@dataclass
class PPOConfig(RecurrentPolicyConfig):
    """PPO hyperparameters (CleanRL's names and defaults where they apply)."""

    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda"})
    norm_adv: bool = field(default=True, metadata={"help": "normalise advantages per minibatch"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO ratio clip"})
    clip_vloss: bool = field(default=True, metadata={"help": "clip the value loss as in the PPO paper's code"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    target_kl: float | None = field(default=None, metadata={"help": "stop the epochs early once approx KL exceeds this"})
    bootstrap_truncated: bool = field(default=True, metadata={"help": "bootstrap a time-limit truncation from the value of its final observation; off, a truncation ends the return like a termination (for tasks where running out of time is failure)"})


class RecurrentActorCritic(nn.Module):
    """encoder -> memory backbone -> [torso] -> (policy head, value head); actor and critic share the memory.

    `head_width` W > 0 puts a torso of two ReLU layers of width W between the memory and the heads, reading
    the memory's output beside the encoded observation: the policy can then combine what memory holds with
    what is seen now (e.g. a remembered goal cell with the agent's current cell) after the recurrence, where
    linear heads cannot form such conjunctions.
    """

    def __init__(self, observation_space: gymnasium.Space, action_space: gymnasium.Space,
                 backbone: str, hidden_dim: int, backbone_options: dict | None = None, encoder_width: int = 0,
                 head_width: int = 0):
        super().__init__()
        self.backbone_name = backbone
        if not isinstance(head_width, int) or head_width < 0:
            raise ValueError(f"head width must be an integer >= 0 (0: linear heads on the memory's output), got {head_width!r}")
        self.encoder = make_encoder(observation_space, hidden_dim, encoder_width)
        self.backbone = make_backbone(backbone, hidden_dim, hidden_dim, **(backbone_options or {}))
        self.torso = None
        feature_dim = hidden_dim
        if head_width > 0:
            self.torso = nn.Sequential(orthogonal_init(nn.Linear(2 * hidden_dim, head_width)), nn.ReLU(),
                                       orthogonal_init(nn.Linear(head_width, head_width)), nn.ReLU())
            feature_dim = head_width
        self.actor = ActionHead(action_space, feature_dim)
        self.critic = orthogonal_init(nn.Linear(feature_dim, 1), gain=1.0)

    def _features(self, memory: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """What the heads read: the memory's output, or the torso on [memory output, encoded observation]."""
        if self.torso is None:
            return memory
        return self.torso(torch.cat([memory, encoded], dim=-1))

    def _policy(self, features: torch.Tensor, encoded: torch.Tensor, memory: torch.Tensor, state: State):
        """The actor's distribution over `features`. torch's distributions reject nan/inf parameters with a
        ValueError; when the encoded observation or the memory's output is what went non-finite (trainers keep
        the weights finite), that becomes TrainingDiverged naming it, at no cost to steps that are fine."""
        try:
            return self.actor(features)
        except ValueError as error:
            if not bool(encoded.isfinite().all()):
                cause = "the encoded observation became nan or inf"
            elif not bool(memory.isfinite().all()):
                values = torch.cat([value.detach().flatten().float() for value in state.values()])
                finite = values[values.isfinite()]
                largest = finite.abs().max().item() if finite.numel() else float("nan")
                cause = (f"the {self.backbone_name} memory's output became nan or inf: its state holds "
                         f"{int((~values.isfinite()).sum())} nan/inf entries and finite ones up to {largest:.1e} "
                         "in magnitude (the memory overflowed)")
            else:
                raise
            raise TrainingDiverged(f"{cause}; training stopped and the last good checkpoint was kept") from error

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        return self.backbone.initial_state(batch_size, device)

    def step(self, obs: Observation, state: State, is_first: torch.Tensor):
        """obs [B, ...], is_first [B] -> (action distribution, value [B], next state)."""
        encoded = self.encoder(obs)
        memory, state = self.backbone.step(encoded, state, is_first)
        features = self._features(memory, encoded)
        return self._policy(features, encoded, memory, state), self.critic(features).squeeze(-1), state

    def act(self, obs: Observation, state: State, is_first: torch.Tensor, deterministic: bool = False):
        """The policy interface `evaluate` uses: obs [B, ...], is_first [B] -> (action [B, ...], next state)."""
        distribution, _, state = self.step(obs, state, is_first)
        action = self.actor.mode(distribution) if deterministic else distribution.sample()
        return action, state

    def value(self, obs: Observation, state: State, is_first: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(obs)
        memory, _ = self.backbone.step(encoded, state, is_first)
        return self.critic(self._features(memory, encoded)).squeeze(-1)

    def forward(self, obs: Observation, state: State, is_first: torch.Tensor):
        """obs [B, T, ...], is_first [B, T] -> (action distribution over [B, T], values [B, T])."""
        encoded = self.encoder(obs)
        memory, final_state = self.backbone(encoded, state, is_first)
        features = self._features(memory, encoded)
        return self._policy(features, encoded, memory, final_state), self.critic(features).squeeze(-1)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                final_values: torch.Tensor, last_value: torch.Tensor, gamma: float, gae_lambda: float):
    """Generalised advantage estimation over [N, T] with terminated and truncated kept apart.

    values[:, t] = V(obs_t); last_value [N] = V of the observation after the rollout;
    final_values[:, t] = V(final observation) of an episode truncated at t (ignored elsewhere).
    The bootstrap target after step t is: 0 if terminated (also when the env reports truncated
    in the same step: the episode really ended), final_values if only truncated, else the next
    value. Advantages do not flow across an episode end.
    Returns (advantages [N, T], returns [N, T]).
    """
    num_steps = rewards.shape[1]
    done = terminated | truncated
    next_values = torch.cat([values[:, 1:], last_value[:, None]], dim=1)
    next_values = torch.where(terminated, 0.0, torch.where(truncated, final_values, next_values))
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(num_steps)):
        running = deltas[:, t] + gamma * gae_lambda * (~done[:, t]) * running
        advantages[:, t] = running
    return advantages, advantages + values


@dataclass
class Rollout:
    """One rollout window [num_envs, num_steps] plus the backbone state at its start."""

    obs: Observation
    is_first: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_values: torch.Tensor
    start_state: State

    @classmethod
    def empty(cls, env, num_steps: int, device: torch.device) -> "Rollout":
        shape = (env.num_envs, num_steps)
        obs_space, act_space = env.single_observation_space, env.single_action_space
        floats = partial(torch.zeros, shape, device=device)
        flags = partial(torch.zeros, shape, dtype=torch.bool, device=device)
        return cls(
            obs=empty_observations(obs_space, shape, device),
            is_first=flags(),
            actions=torch.zeros((*shape, *action_shape(act_space)), dtype=action_dtype(act_space), device=device),
            log_probs=floats(), values=floats(), rewards=floats(),
            terminated=flags(), truncated=flags(), final_values=floats(), start_state={},
        )


class PPOTrainer:
    """Owns the agent, optimiser, env carry and counters; `train` runs to `total_steps`.

    `train` alternates `collect` and `learn` (PPO's update); `agents.dagger` reuses the rest with its own pair.

    Under torchrun every rank builds one with its own share of the envs and the same `run_dir`
    (which only rank 0 writes to); `total_steps` counts the env steps of all ranks together.
    """

    name = "PPO"
    network = "recurrent-actor-critic"
    """The network `build_agent` makes: runs of agents with the same network can start from each other's weights."""

    @staticmethod
    def build_agent(config: PPOConfig, observation_space: gymnasium.Space, action_space: gymnasium.Space,
                    backbone: str) -> RecurrentActorCritic:
        """The untrained agent a run with `config` trains (also how a checkpoint's agent is rebuilt)."""
        return RecurrentActorCritic(observation_space, action_space, backbone, config.hidden_dim, config.backbone_options,
                                    config.encoder_width, config.head_width)

    def __init__(self, config: PPOConfig, env, total_steps: int, device: torch.device,
                 backbone: str, run_dir: Path | None = None, progress: bool = True,
                 distributed: Distributed = Distributed()):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if env.num_envs % config.num_minibatches != 0:
            raise ValueError(
                f"num_envs ({env.num_envs}) must be divisible by num_minibatches ({config.num_minibatches}): "
                "minibatches are slices of the env axis"
            )
        self.config, self.env, self.device, self.distributed = config, env, device, distributed
        self.total_steps = total_steps
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.show_progress = progress and distributed.is_main
        self.agent = self.build_agent(config, env.single_observation_space, env.single_action_space, backbone).to(device)
        # The update's forward pass goes through `learner`: the agent itself, or under torchrun its
        # DDP wrapper, whose backward averages the gradients over ranks.
        self.learner: nn.Module = self.agent
        if distributed.torchrun:
            device_ids = [device.index] if device.type == "cuda" else None
            self.learner = DistributedDataParallel(self.agent, device_ids=device_ids)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=config.learning_rate, eps=1e-5)
        self.batch_size = env.num_envs * config.num_steps * distributed.world_size
        self.num_updates = math.ceil(total_steps / self.batch_size)
        # What the run really steps: total_steps rounded up to whole rollouts.
        self.planned_steps = self.num_updates * self.batch_size
        processes = f" x {distributed.world_size} processes" if distributed.torchrun else ""
        self.step_unit = (f"{self.name} trains on whole rollouts of {self.batch_size:,} steps "
                          f"({env.num_envs} envs x {config.num_steps} steps{processes})")
        self.update = 0
        self.global_step = 0
        self.elapsed_seconds = 0.0
        self.statistics = EpisodeStatistics(distributed=distributed)
        self.next_obs, info = env.reset()
        self.next_is_first = info["is_first"]
        self.state = self.agent.initial_state(env.num_envs, device)

    # -- checkpoints ---------------------------------------------------------------------

    def checkpoint_payload(self, extra: dict[str, Any]) -> dict:
        """Plain data to resume from; under torchrun a collective (every rank's RNG, env and carry go under "ranks")."""
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        own = {
            "rng": rng_state(),
            "env": env_state,
            "carry": {"obs": self.next_obs, "is_first": self.next_is_first, "state": self.state},
        }
        shared = {
            **extra,
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "update": self.update,
            "global_step": self.global_step,
            "elapsed_seconds": self.elapsed_seconds,
            "statistics": self.statistics.state_dict(),
        }
        if self.distributed.torchrun:
            return {**shared, "ranks": self.distributed.all_gather(to_cpu(own))}
        return {**shared, **own}

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint: weights, optimiser, counters, and, when it was written by as many
        processes as there are now, this rank's RNG and (native envs) its episodes."""
        self.agent.load_state_dict(payload["agent"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.update, self.global_step = payload["update"], payload["global_step"]
        self.elapsed_seconds = payload["elapsed_seconds"]
        self.statistics.load_state_dict(payload["statistics"])
        ranks = payload.get("ranks", [payload])
        if len(ranks) != self.distributed.world_size:
            return
        own = ranks[self.distributed.rank]
        restore_rng_state(own["rng"])
        if own["env"] is not None and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(own["env"])
            carry = own["carry"]
            self.next_obs = map_observations(lambda obs: obs.to(self.device), carry["obs"])
            self.next_is_first = carry["is_first"].to(self.device)
            self.state = {key: value.to(self.device) for key, value in carry["state"].items()}

    # -- rollout and update --------------------------------------------------------------

    @torch.no_grad()
    def collect(self, writer) -> Rollout:
        rollout = Rollout.empty(self.env, self.config.num_steps, self.device)
        rollout.start_state = {key: value.clone() for key, value in self.state.items()}
        for t in range(self.config.num_steps):
            obs, is_first = self.next_obs, self.next_is_first
            distribution, value, self.state = self.agent.step(obs, self.state, is_first)
            action = distribution.sample()
            self.next_obs, reward, terminated, truncated, info = self.env.step(action)
            self.next_is_first = info["is_first"]
            self.global_step += self.env.num_envs * self.distributed.world_size
            map_observations(lambda buffer, value: buffer[:, t].copy_(value), rollout.obs, obs)
            rollout.is_first[:, t], rollout.actions[:, t] = is_first, action
            rollout.log_probs[:, t] = self.agent.actor.log_prob(distribution, action)
            rollout.values[:, t], rollout.rewards[:, t] = value, reward
            rollout.terminated[:, t], rollout.truncated[:, t] = terminated, truncated
            if self.config.bootstrap_truncated and bool(truncated.any()):
                no_reset = torch.zeros_like(truncated)
                rollout.final_values[:, t] = self.agent.value(info["final_obs"], self.state, no_reset)
            self.statistics.record(info, writer, self.global_step)
        self.statistics.gather(writer, self.global_step)
        self.statistics.log_iteration(writer, self.global_step)
        return rollout

    @torch.no_grad()
    def advantages_and_returns(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the rollout just collected (bootstrapped from the carry's value) -> ([N, T], [N, T])."""
        config = self.config
        last_value = self.agent.value(self.next_obs, self.state, self.next_is_first)
        # Without bootstrapping a truncation ends the return as a termination does.
        ended = rollout.terminated if config.bootstrap_truncated else rollout.terminated | rollout.truncated
        return compute_gae(rollout.rewards, rollout.values, ended, rollout.truncated, rollout.final_values,
                           last_value, config.gamma, config.gae_lambda)

    def epochs(self, rollout: Rollout):
        """`update_epochs` passes over the rollout, each yielding its `num_minibatches` random slices of the env
        axis as (env indices, (observations, start state, is_first)): the inputs to re-run them from."""
        envs_per_minibatch = self.env.num_envs // self.config.num_minibatches

        def minibatch(envs: torch.Tensor):
            obs = map_observations(lambda buffer: buffer[envs], rollout.obs)
            start_state = {key: value[envs] for key, value in rollout.start_state.items()}
            return envs, (obs, start_state, rollout.is_first[envs])

        for _ in range(self.config.update_epochs):
            order = torch.randperm(self.env.num_envs, device=self.device)
            yield (minibatch(order[start:start + envs_per_minibatch])
                   for start in range(0, self.env.num_envs, envs_per_minibatch))

    def learn(self, rollout: Rollout) -> dict[str, float]:
        config = self.config
        advantages, returns = self.advantages_and_returns(rollout)
        clip_fractions, approx_kl, old_approx_kl = [], torch.zeros(()), torch.zeros(())
        for minibatches in self.epochs(rollout):
            for envs, inputs in minibatches:
                distribution, new_values = self.learner(*inputs)
                new_log_probs = self.agent.actor.log_prob(distribution, rollout.actions[envs])
                entropy = self.agent.actor.entropy(distribution)
                log_ratio = new_log_probs - rollout.log_probs[envs]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-log_ratio).mean()
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clip_fractions.append(((ratio - 1.0).abs() > config.clip_coef).float().mean().item())
                minibatch_advantages = advantages[envs]
                if config.norm_adv:
                    minibatch_advantages = (minibatch_advantages - minibatch_advantages.mean()) / (
                        minibatch_advantages.std() + 1e-8
                    )
                policy_loss = torch.max(
                    -minibatch_advantages * ratio,
                    -minibatch_advantages * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef),
                ).mean()
                value_error = (new_values - returns[envs]).square()
                if config.clip_vloss:
                    clipped_values = rollout.values[envs] + (new_values - rollout.values[envs]).clamp(
                        -config.clip_coef, config.clip_coef
                    )
                    value_error = torch.max(value_error, (clipped_values - returns[envs]).square())
                value_loss = 0.5 * value_error.mean()
                entropy_loss = entropy.mean()
                loss = policy_loss - config.ent_coef * entropy_loss + config.vf_coef * value_loss
                checked_loss = self.distributed.mean(loss.detach())  # non-finite on one rank stops every rank
                if not torch.isfinite(checked_loss):
                    raise TrainingDiverged(
                        f"the PPO loss became {checked_loss.item()} at update {self.update + 1} "
                        f"(step {self.global_step}); "
                        "training stopped and the last good checkpoint was kept"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.agent.parameters(), config.max_grad_norm)
                self.optimizer.step()
            if config.target_kl is not None and self.distributed.mean(approx_kl) > config.target_kl:
                break
        predicted, actual = rollout.values.flatten(), returns.flatten()
        variance = actual.var()
        explained_variance = float("nan") if variance == 0 else (1 - (actual - predicted).var() / variance).item()
        return {
            "losses/value_loss": value_loss.item(),
            "losses/policy_loss": policy_loss.item(),
            "losses/entropy": entropy_loss.item(),
            "losses/old_approx_kl": old_approx_kl.item(),
            "losses/approx_kl": approx_kl.item(),
            "losses/clipfrac": float(np.mean(clip_fractions)),
            "losses/explained_variance": explained_variance,
        }

    # -- the loop ------------------------------------------------------------------------

    def train(self, checkpoint_extra: dict[str, Any] | None = None,
              on_update: Callable[["PPOTrainer", dict[str, float]], None] | None = None) -> dict[str, float]:
        """Run updates until `total_steps`; checkpoints every `checkpoint_every` updates and at the end.

        `checkpoint_extra` (e.g. the resolved config) is stored in every checkpoint and, on a
        fresh run, logged once to tensorboard as the hyperparameter table.
        """
        config = self.config
        writes_files = self.run_dir is not None and self.distributed.is_main
        writer = open_writer(self.run_dir, purge_step=self.global_step) if writes_files else None
        if writer is not None and self.global_step == 0 and checkpoint_extra:
            rows = "\n".join(f"|{key}|{value}|" for key, value in flatten(checkpoint_extra).items())
            writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
        progress = ProgressLine(self.planned_steps, enabled=self.show_progress)
        metrics: dict[str, float] = {}
        try:
            while self.update < self.num_updates:
                check_finite_parameters(self.agent, self.name, f"before update {self.update + 1} (step {self.global_step})")
                started = time.perf_counter()
                if config.anneal_lr:
                    self.optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - self.update / self.num_updates)
                rollout = self.collect(writer)
                metrics = self.learn(rollout)
                self.update += 1
                self.elapsed_seconds += time.perf_counter() - started
                steps_per_second = self.global_step / max(self.elapsed_seconds, 1e-9)
                metrics["charts/SPS"] = steps_per_second
                metrics["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
                if writer is not None:
                    for key, value in metrics.items():
                        writer.add_scalar(key, value, self.global_step)
                progress.update(self.global_step, steps_per_second, self.statistics,
                                final=self.update == self.num_updates,
                                reports_success=getattr(self.env, "reports_success", False))
                last = self.update == self.num_updates
                if self.run_dir is not None and (self.update % config.checkpoint_every == 0 or last):
                    check_finite_parameters(self.agent, self.name, f"at update {self.update} (step {self.global_step})")
                    payload = self.checkpoint_payload(checkpoint_extra or {})
                    if writes_files:
                        save_checkpoint(self.run_dir, payload)
                if on_update is not None:
                    on_update(self, metrics)
        finally:
            if writer is not None:
                writer.close()
        return metrics

"""The Dreamer trainer: replay, updates, checkpoints and the act-and-learn loop.

Memory across windows (DreamerV3's replay context). With `replay_state` (the default) every
replay row also stores the memory the agent had before that step: h_{t-1} and the backbone
state carried into step t ("memory.deter", "memory.backbone.<key>"; fixed-size for any
backbone). A replayed window enters its first row with that stored memory instead of the
initial state, so the world model and imagination see what happened before the window; a
window whose first row is_first resets as usual. After each update the memory the world model
computed for the window's later rows is written back to the replay at those rows, so stored
states do not stay as stale as the policy that collected them. `burn_in` > 0 replays that many
extra rows before each trained window without gradient (they refresh its start state).
Without more, gradients stop at the window's start (truncated backpropagation): a cue older
than the window is only learnable while the memory keeps it by itself.

Stored gradients (`stored_gradient`) carry the gradient across windows. The start memory of a
trained window is a leaf of the graph; after the update, its gradient (of this window's loss,
dL/d memory) is stored at the window's first row ("gradient.memory.*" fields). When a later
update samples a window that ends just before such a row, the memory it computes going into
that row, m, adds <g, m> to its loss (Re<g, m> for complex states), so the earlier window's
parameters and start memory receive the gradient the later window's loss had with respect to
m: truncated backpropagation through time whose backward pass crosses windows through the
replay, one window per hop, with gradients as stale as the stored memory. A cue several windows
before its use reaches the rows that wrote it only over successive updates (measured: one hop
learns, three did not on small budgets; benchmarks/dreamer.md).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from torch import nn

from agents.dreamer.agent import DreamerAgent
from agents.dreamer.config import DreamerConfig
from agents.replay import SequenceReplay
from agents.run import (
    EpisodeStatistics,
    check_finite_parameters,
    ProgressLine,
    TrainingDiverged,
    flatten,
    open_writer,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)

CARRY_PREFIX = "memory."
"""Replay fields of the stored memory: "memory.deter" and "memory.backbone.<state key>"."""


def flatten_carry(carry: dict) -> dict[str, torch.Tensor]:
    """{"deter": d, "backbone": {key: leaf}} -> flat replay fields {"memory.deter": d, "memory.backbone.key": leaf}."""
    flat = {f"{CARRY_PREFIX}deter": carry["deter"]}
    flat.update({f"{CARRY_PREFIX}backbone.{key}": value for key, value in carry["backbone"].items()})
    return flat


GRADIENT_PREFIX = "gradient."
"""Replay fields of stored gradients: "gradient.memory.deter", "gradient.memory.backbone.<state key>"."""


def differentiable(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def carry_leaves_requiring_grad(carry: dict) -> dict:
    """A copy of the carry whose real and complex leaves are fresh leaves of the graph (their
    `.grad` after backward is the loss gradient with respect to them); other leaves as they are."""
    def leaf(value: torch.Tensor) -> torch.Tensor:
        return value.detach().requires_grad_(True) if differentiable(value) else value
    return {"deter": leaf(carry["deter"]), "backbone": {key: leaf(value) for key, value in carry["backbone"].items()}}


def inner_product(gradient: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Re<gradient, value> per row: [N, ...] x [N, ...] -> [N]. Its gradient with respect to
    `value` is `gradient` under torch's convention for complex tensors."""
    return (gradient.conj() * value).real.flatten(1).sum(1)


def unflatten_carry(fields: dict[str, torch.Tensor]) -> dict:
    """The inverse of `flatten_carry`; fields without the memory prefix are ignored."""
    backbone_prefix = f"{CARRY_PREFIX}backbone."
    return {"deter": fields[f"{CARRY_PREFIX}deter"],
            "backbone": {key.removeprefix(backbone_prefix): value for key, value in fields.items()
                         if key.startswith(backbone_prefix)}}


class DreamerTrainer:
    """Owns the agent, optimisers, replay, env carry and counters; `train` runs to `total_steps`.

    Each loop iteration first spends the accumulated training credit (one update per unit;
    env steps add num_envs * train_ratio / (batch_size * batch_length) once the replay holds
    `prefill` steps), then steps every env once with the current policy (random actions
    while a fresh run's global step is below `prefill`) and appends the step to the replay.
    Resume: the replay is part of the checkpoint when it is at most `replay_checkpoint_mb`;
    otherwise a resumed run starts with an empty replay and collects `prefill` steps with the
    current policy before it trains again.
    """

    network = "dreamer"
    """The network `build_agent` makes (see `PPOTrainer.network`)."""

    @staticmethod
    def build_agent(config: DreamerConfig, observation_space: gymnasium.Space, action_space: gymnasium.Space,
                    backbone: str) -> DreamerAgent:
        """The untrained agent a run with `config` trains (also how a checkpoint's agent is rebuilt)."""
        return DreamerAgent(observation_space, action_space, backbone, config)

    def __init__(self, config: DreamerConfig, env, total_steps: int, device: torch.device,
                 backbone: str, run_dir: Path | None = None, progress: bool = True):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        config.validate()
        if config.replay_capacity < env.num_envs * (config.burn_in + config.batch_length):
            raise ValueError(
                f"replay_capacity ({config.replay_capacity}) must hold at least burn_in + batch_length "
                f"({config.burn_in + config.batch_length}) steps for each of the {env.num_envs} envs"
            )
        self.config, self.env, self.device = config, env, torch.device(device)
        self.total_steps = total_steps
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.show_progress = progress
        self.agent = self.build_agent(config, env.single_observation_space, env.single_action_space, backbone).to(self.device)
        self.world_model_optimizer = torch.optim.Adam(self.agent.world_model.parameters(), lr=config.world_model_lr, eps=1e-8)
        self.actor_optimizer = torch.optim.Adam(self.agent.actor.parameters(), lr=config.actor_lr, eps=1e-5)
        self.critic_optimizer = torch.optim.Adam(self.agent.critic.parameters(), lr=config.critic_lr, eps=1e-5)
        obs_space = env.single_observation_space
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        fields = {"obs": (tuple(obs_space.shape), obs_dtype), "is_first": ((), torch.bool),
                  "action": ((self.agent.world_model.action_dim,), torch.float32),
                  "reward": ((), torch.float32), "terminated": ((), torch.bool)}
        if config.replay_state:
            carry = flatten_carry(self.agent.initial_state(1, "cpu"))
            fields.update({name: (tuple(value.shape[1:]), value.dtype) for name, value in carry.items()})
        self.gradient_fields = ({f"{GRADIENT_PREFIX}{name}": (tuple(value.shape[1:]), value.dtype)
                                 for name, value in carry.items() if differentiable(value)}
                                if config.stored_gradient else {})
        fields.update(self.gradient_fields)
        self.replay = SequenceReplay(config.replay_capacity, env.num_envs, fields, device=env.device,
                                     sampling=config.replay_sampling, recency_exponent=config.recency_exponent)
        self.updates_per_env_step = config.train_ratio / (config.batch_size * config.batch_length)
        # What the run really steps: total_steps rounded up to whole steps of every env.
        self.planned_steps = math.ceil(total_steps / env.num_envs) * env.num_envs
        self.step_unit = f"Dreamer steps all {env.num_envs} envs together"
        self.update = 0
        self.global_step = 0
        self.elapsed_seconds = 0.0
        self.train_credit = 0.0
        self.statistics = EpisodeStatistics()
        self.next_obs, info = env.reset()
        self.next_is_first = info["is_first"]
        self.state = self.agent.initial_state(env.num_envs, self.device)

    # -- checkpoints ---------------------------------------------------------------------

    def checkpoint_payload(self, extra: dict[str, Any]) -> dict:
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        small_replay = self.replay.nbytes <= self.config.replay_checkpoint_mb * 2**20
        return {
            **extra,
            "agent": self.agent.state_dict(),
            "optimizers": {"world_model": self.world_model_optimizer.state_dict(),
                           "actor": self.actor_optimizer.state_dict(),
                           "critic": self.critic_optimizer.state_dict()},
            "update": self.update,
            "global_step": self.global_step,
            "elapsed_seconds": self.elapsed_seconds,
            "train_credit": self.train_credit,
            "rng": rng_state(),
            "env": env_state,
            "carry": {"obs": self.next_obs, "is_first": self.next_is_first,
                      "state": {"deter": self.state["deter"], "backbone": dict(self.state["backbone"])}},
            "statistics": self.statistics.state_dict(),
            "replay": self.replay.state_dict() if small_replay else None,
        }

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint: weights, optimisers, counters, RNG, replay when it was
        stored, and (native envs) the episodes in progress."""
        self.agent.load_state_dict(payload["agent"])
        for name, optimizer in (("world_model", self.world_model_optimizer), ("actor", self.actor_optimizer),
                                ("critic", self.critic_optimizer)):
            optimizer.load_state_dict(payload["optimizers"][name])
        self.update, self.global_step = payload["update"], payload["global_step"]
        self.elapsed_seconds, self.train_credit = payload["elapsed_seconds"], payload["train_credit"]
        self.statistics.load_state_dict(payload["statistics"])
        restore_rng_state(payload["rng"])
        if payload["replay"] is not None:
            self.replay.load_state_dict(payload["replay"])
        if payload["env"] is not None and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(payload["env"])
            carry = payload["carry"]
            self.next_obs = carry["obs"].to(self.env.device)
            self.next_is_first = carry["is_first"].to(self.env.device)
            self.state = {"deter": carry["state"]["deter"].to(self.device),
                          "backbone": {key: value.to(self.device) for key, value in carry["state"]["backbone"].items()}}

    # -- acting and learning -------------------------------------------------------------

    def ready_to_train(self) -> bool:
        config = self.config
        return self.replay.num_steps >= config.prefill and self.replay.can_sample(config.burn_in + config.batch_length)

    def env_step(self, writer) -> None:
        """Step every env once with the current policy and append the step to the replay."""
        obs, is_first, carry = self.next_obs, self.next_is_first, self.state
        action, self.state = self.agent.policy_step(
            obs.to(self.device), carry, is_first.to(self.device), uniform=self.global_step < self.config.prefill
        )
        self.next_obs, reward, terminated, _, info = self.env.step(self.agent.env_action(action).to(self.env.device))
        self.next_is_first = info["is_first"]
        self.global_step += self.env.num_envs
        row = {"obs": obs, "is_first": is_first, "action": action, "reward": reward.float(), "terminated": terminated}
        if self.config.replay_state:
            row.update({key: value.detach() for key, value in flatten_carry(carry).items()})
        row.update({name: torch.zeros((self.env.num_envs, *shape), dtype=dtype)
                    for name, (shape, dtype) in self.gradient_fields.items()})
        self.replay.add(row)
        self.statistics.record(info, writer, self.global_step)

    def replayed_world_model_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any], dict,
                                                  tuple | None]:
        """Sample burn_in + batch_length rows per window, enter each window with its stored
        memory (replay_state) or the initial state, run the burn-in rows without gradient, and
        return `WorldModel.loss` of the trained rows, the observe() outputs, those rows and, with
        stored_gradient, where the trained windows start (envs [B], rows [B], the start carry
        whose leaves collect the gradient; None otherwise) for `store_start_gradients`. With
        replay_state, the memory the model has just computed for every replayed row after the
        first is written back to the replay. With stored_gradient, the loss also holds the stored
        gradient of the row after each window against the memory the window carries into it."""
        config, world_model = self.config, self.agent.world_model
        sampled, (envs, rows) = self.replay.sample_with_index(config.batch_size, config.burn_in + config.batch_length)
        sampled = {key: value.to(self.device) for key, value in sampled.items()}
        start = unflatten_carry({key: value[:, 0] for key, value in sampled.items()}) if config.replay_state else None
        carried: list[dict] = []
        if config.burn_in > 0:
            with torch.no_grad():
                burn_in = world_model.observe(sampled["obs"][:, :config.burn_in], sampled["action"][:, :config.burn_in],
                                              sampled["is_first"][:, :config.burn_in], start)
            start = burn_in["final"]
            carried.append({"deter": burn_in["deter"], "backbone": burn_in["states"]})
        batch = {key: value[:, config.burn_in:] for key, value in sampled.items()}
        window_start = None
        if config.stored_gradient:
            start = carry_leaves_requiring_grad(start)
            window_start = (envs, rows[:, config.burn_in], start)
        loss, terms, outputs = world_model.loss(batch, start)
        terms["total"] = loss
        if config.stored_gradient:  # a surrogate for backward only: its value is not a loss, so "total" leaves it out
            loss = loss + self.stored_gradient_term(envs, rows[:, -1], outputs["final"])
        if config.replay_state:
            carried.append({"deter": outputs["deter"].detach(), "backbone": outputs["states"]})
            refreshed = {key: torch.cat([part[key] for part in map(flatten_carry, carried)], 1)[:, 1:]
                         for key in flatten_carry(carried[0])}
            self.replay.overwrite(envs, rows[:, 1:], refreshed)
        return loss, terms, outputs, batch, window_start

    def stored_gradient_term(self, envs: torch.Tensor, last_rows: torch.Tensor, final: dict) -> torch.Tensor:
        """Sum over windows of <stored gradient of the row after the window, memory carried into
        it> (zero where that row is not written yet or starts an episode). Each stored gradient is
        used once and then cleared, as backpropagation through both windows would use it: kept,
        a stale gradient is a fixed linear objective that later updates could push the memory
        along without bound (an S5 state has no tanh to stop it)."""
        next_rows, written = self.replay.rows_after(last_rows)
        stored = self.replay.gather(envs, next_rows, [*self.gradient_fields, "is_first"])
        self.replay.overwrite(envs, next_rows[:, None], {name: torch.zeros_like(stored[name])[:, None]
                                                         for name in self.gradient_fields})
        keep = (written & ~stored["is_first"]).to(self.device)
        carried = flatten_carry(final)
        term = sum(inner_product(stored[f"{GRADIENT_PREFIX}{name}"].to(self.device), carried[name])
                   for name in (field.removeprefix(GRADIENT_PREFIX) for field in self.gradient_fields))
        return torch.where(keep, term, torch.zeros_like(term)).sum()

    def store_start_gradients(self, window_start: tuple) -> None:
        """After backward: store each trained window's loss gradient with respect to its start
        memory at its first row (zeros for a leaf the loss did not reach)."""
        envs, first_rows, start = window_start
        gradients = {f"{GRADIENT_PREFIX}{name}": (value.grad if value.grad is not None else torch.zeros_like(value))
                     for name, value in flatten_carry(start).items() if differentiable(value)}
        self.replay.overwrite(envs, first_rows[:, None], {name: value[:, None] for name, value in gradients.items()})

    def train_step(self) -> dict[str, float]:
        """One update of the world model, actor and critic on a replayed batch."""
        config, agent = self.config, self.agent
        world_model_loss, terms, start, batch, window_start = self.replayed_world_model_loss()
        actor_loss, critic_loss, ac_metrics = agent.actor_critic_loss(start, batch)
        losses = torch.stack([world_model_loss, actor_loss, critic_loss]).detach()
        if not bool(torch.isfinite(losses).all()):  # one host sync for the three checks
            name, value = next((name, value) for name, value in zip(("world model", "actor", "critic"), losses.tolist())
                               if not math.isfinite(value))
            raise TrainingDiverged(
                f"the Dreamer {name} loss became {value} at update {self.update + 1} "
                f"(step {self.global_step}); training stopped and the last good checkpoint was kept"
            )
        optimizers = (self.world_model_optimizer, self.actor_optimizer, self.critic_optimizer)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        (world_model_loss + actor_loss + critic_loss).backward()
        if window_start is not None:
            self.store_start_gradients(window_start)
        nn.utils.clip_grad_norm_(agent.world_model.parameters(), config.world_model_grad_clip)
        nn.utils.clip_grad_norm_(agent.actor.parameters(), config.actor_critic_grad_clip)
        nn.utils.clip_grad_norm_(agent.critic.parameters(), config.actor_critic_grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        agent.update_slow_critic()
        metrics = {f"losses/world_model/{name}": value for name, value in terms.items()}
        metrics.update({"losses/actor": actor_loss, "losses/critic": critic_loss})
        metrics.update(ac_metrics)
        values = torch.stack([value.detach().float() for value in metrics.values()]).tolist()  # one host sync
        return dict(zip(metrics, values))

    # -- the loop ------------------------------------------------------------------------

    def train(self, checkpoint_extra: dict[str, Any] | None = None,
              on_update: Callable[["DreamerTrainer", dict[str, float]], None] | None = None) -> dict[str, float]:
        """Act and learn until `total_steps` env steps; checkpoints every `checkpoint_every`
        updates and at the end.

        `checkpoint_extra` (e.g. the resolved config) is stored in every checkpoint and, on a
        fresh run, logged once to tensorboard as the hyperparameter table.
        """
        config = self.config
        writer = open_writer(self.run_dir, purge_step=self.global_step) if self.run_dir is not None else None
        if writer is not None and self.global_step == 0 and checkpoint_extra:
            rows = "\n".join(f"|{key}|{value}|" for key, value in flatten(checkpoint_extra).items())
            writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
        progress = ProgressLine(self.planned_steps, enabled=self.show_progress)
        reports_success = getattr(self.env, "reports_success", False)
        metrics: dict[str, float] = {}
        clock = time.perf_counter()

        def tick() -> float:
            nonlocal clock
            now = time.perf_counter()
            self.elapsed_seconds += now - clock
            clock = now
            return self.global_step / max(self.elapsed_seconds, 1e-9)

        try:
            while True:
                while self.train_credit >= 1.0 and self.ready_to_train():
                    metrics = self.train_step()
                    self.train_credit -= 1.0
                    self.update += 1
                    metrics["charts/SPS"] = tick()
                    if self.update % config.log_every == 0:
                        self.statistics.log_iteration(writer, self.global_step)
                        if writer is not None:
                            for key, value in metrics.items():
                                writer.add_scalar(key, value, self.global_step)
                    if self.run_dir is not None and self.update % config.checkpoint_every == 0:
                        check_finite_parameters(self.agent, "Dreamer",
                                                f"at update {self.update} (step {self.global_step})")
                        save_checkpoint(self.run_dir, self.checkpoint_payload(checkpoint_extra or {}))
                    if on_update is not None:
                        on_update(self, metrics)
                if self.global_step >= self.total_steps:
                    break
                check_finite_parameters(self.agent, "Dreamer", f"before acting at step {self.global_step}")
                self.env_step(writer)
                if self.ready_to_train():
                    self.train_credit += self.env.num_envs * self.updates_per_env_step
                progress.update(self.global_step, tick(), self.statistics, reports_success=reports_success)
            steps_per_second = tick()
            progress.update(self.global_step, steps_per_second, self.statistics, final=True,
                            reports_success=getattr(self.env, "reports_success", False))
            if self.run_dir is not None:
                check_finite_parameters(self.agent, "Dreamer", f"at the end (step {self.global_step})")
                save_checkpoint(self.run_dir, self.checkpoint_payload(checkpoint_extra or {}))
        finally:
            if writer is not None:
                writer.close()
        return metrics

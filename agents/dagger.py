"""DAgger: a recurrent policy imitates the env's privileged oracle on the states it reaches itself.

Not reinforcement learning: the reward is never used. The teacher is the env's `oracle_action()`,
which reads the hidden state (the cue a T-maze showed, the current map of Color-Cubes), so the
student receives, at every step, the action a perfect memory would take; what it must learn is to
keep, from its own observations, what that action depends on. This separates two questions a memory
study asks: can a backbone represent what the task needs (here, with a dense signal), and can RL find
it from the reward (PPO). A DAgger run's weights can start a PPO run on the same network
(`--init-from`): imitation first, then fine-tuning on the reward.

The loop (Ross et al., 2011, "A Reduction of Imitation Learning and Structured Prediction to No-Regret
Online Learning", with a per-step mixture):
- collect: every env executes the teacher's action with probability `teacher_prob` x (1 - u / U) at
  update u of U, else the student's most likely action, so the student visits the states its own
  mistakes lead to; the teacher's action is recorded at every step, whichever was executed;
- learn: `update_epochs` passes of `num_minibatches` slices of the env axis, minimising the negative
  log-likelihood of the teacher's actions under the student's policy, with whole windows re-run
  through the backbone from their stored start state (as PPO's update does). The loss averages over
  every step, or with `sum_loss_over_time` sums over each window's steps. Adam's step does not depend on
  the loss's scale, the gradient-norm clip does: summed, every gradient is clipped to `max_grad_norm`.
  That is what teaches s5 the passive T-maze's turn at L = 100 (one step in 101), which it never learns
  with the average (`benchmarks/studies/tmaze-passive-l500/README.md`).

Everything else — network, rollout windows, checkpoints, resume, logs, progress — is PPO's
(`agents.ppo.PPOTrainer`); the critic is built (so the weights fit PPO's network) but not trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from agents.networks import map_observations
from agents.ppo import PPOTrainer, RecurrentPolicyConfig, Rollout
from agents.run import TrainingDiverged


@dataclass
class DAggerConfig(RecurrentPolicyConfig):
    """DAgger's settings: the network, windows and optimiser it shares with PPO, and the teacher's share."""

    teacher_prob: float = field(default=1.0, metadata={"help": "probability that an env executes the teacher's action at the first update; it falls linearly to 0 at the last (the student acts otherwise)"})
    sum_loss_over_time: bool = field(default=False, metadata={"help": (
        "sum each window's imitation loss over its steps (then average over envs) instead of averaging over every "
        "step; Adam ignores the loss's scale but the gradient-norm clip (max_grad_norm) does not, so summed, every "
        "gradient is clipped: with it s5 learns the passive T-maze's turn, one step in L + 1, which it does not "
        "with the average")})


def has_oracle(env) -> bool:
    """Whether `env` can name the teacher's action (memrl's own envs do; gymnasium, Atari and ManiSkill envs do not)."""
    try:
        env.oracle_action()
    except (AttributeError, NotImplementedError):
        return False
    return True


class DAggerTrainer(PPOTrainer):
    """PPO's trainer with DAgger's `collect` and `learn`; `train` runs to `total_steps`."""

    name = "DAgger"

    def __init__(self, config: DAggerConfig, env, total_steps: int, device: torch.device, backbone: str,
                 run_dir=None, progress: bool = True):
        if not 0.0 <= config.teacher_prob <= 1.0:
            raise ValueError(f"teacher_prob must be a probability in [0, 1], got {config.teacher_prob}")
        super().__init__(config, env, total_steps, device, backbone, run_dir=run_dir, progress=progress)
        if not has_oracle(env):
            raise ValueError(f"DAgger imitates the env's oracle_action(), and {type(env).__name__} has none; "
                             "it trains on memrl's own envs (see envs.registry)")

    def teacher_share(self) -> float:
        """The probability, at the coming update, that an env executes the teacher's action."""
        return self.config.teacher_prob * (1.0 - self.update / self.num_updates)

    @torch.no_grad()
    def collect(self, writer) -> Rollout:
        """One window of the mixture's experience; `actions` holds the teacher's action at every step
        (the labels), whichever action was executed."""
        rollout = Rollout.empty(self.env, self.config.num_steps, self.device)
        rollout.start_state = {key: value.clone() for key, value in self.state.items()}
        share = self.teacher_share()
        for t in range(self.config.num_steps):
            obs, is_first = self.next_obs, self.next_is_first
            teacher_action = self.env.oracle_action()
            distribution, _, self.state = self.agent.step(obs, self.state, is_first)
            student_action = self.agent.actor.mode(distribution)
            teacher_acts = torch.rand(self.env.num_envs, device=self.device) < share
            teacher_acts = teacher_acts.view(-1, *([1] * (teacher_action.dim() - 1)))
            action = torch.where(teacher_acts, teacher_action, student_action)
            self.next_obs, _, _, _, info = self.env.step(action)
            self.next_is_first = info["is_first"]
            self.global_step += self.env.num_envs
            map_observations(lambda buffer, value: buffer[:, t].copy_(value), rollout.obs, obs)
            rollout.is_first[:, t], rollout.actions[:, t] = is_first, teacher_action
            self.statistics.record(info, writer, self.global_step)
        self.statistics.gather(writer, self.global_step)
        self.statistics.log_iteration(writer, self.global_step)
        return rollout

    def learn(self, rollout: Rollout) -> dict[str, float]:
        """Negative log-likelihood of the teacher's actions (per step, or per window with
        `sum_loss_over_time`), minibatches along the env axis."""
        config = self.config
        with torch.no_grad():
            distribution, _ = self.agent(rollout.obs, rollout.start_state, rollout.is_first)
            agreement = self._agreement(distribution, rollout.actions)
        for minibatches in self.epochs(rollout):
            for envs, inputs in minibatches:
                distribution, _ = self.agent(*inputs)
                log_likelihood = self.agent.actor.log_prob(distribution, rollout.actions[envs])
                loss = -(log_likelihood.sum(dim=1) if config.sum_loss_over_time else log_likelihood).mean()
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"the imitation loss became {loss.item()} at update {self.update + 1} "
                                           f"(step {self.global_step}); training stopped and the last good "
                                           "checkpoint was kept")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.agent.parameters(), config.max_grad_norm)
                self.optimizer.step()
        return {"losses/imitation_loss": loss.item(), **agreement, "charts/teacher_prob": self.teacher_share()}

    def _agreement(self, distribution, teacher_actions: torch.Tensor) -> dict[str, float]:
        """The student's most likely actions against the teacher's on the window just collected, before
        learning from it: how often they are equal (discrete actions), or their mean absolute difference."""
        student_actions = self.agent.actor.mode(distribution)
        if self.agent.actor.discrete:
            return {"charts/teacher_agreement": (student_actions == teacher_actions).float().mean().item()}
        return {"charts/teacher_action_error": (student_actions - teacher_actions).abs().mean().item()}

"""The Dreamer agent: ties the world model to the actor and critic.

Acting: the posterior of each observation, the actor's action, one backbone step. Learning the
actor-critic (DreamerV3): H imagined steps with `backbone.step` and prior samples, rewards and
continuation from the heads, lambda-returns bootstrapped from the critic, advantages divided
by max(1, S) with S the EMA of the 5th-95th percentile range of the returns, REINFORCE for
discrete and continuous actions with entropy bonus, a two-hot symlog critic regularised
towards its slow EMA copy; optionally (`replay_value_loss`, DreamerV3's repval) the critic also
learns lambda-returns along the replayed windows, bootstrapped from the returns imagined there.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium
import torch
import torch.nn.functional as F
from torch import nn

from agents.dreamer.actor_critic import Actor, Critic, lambda_returns, replay_returns
from agents.dreamer.config import DreamerConfig
from agents.dreamer.world_model import WorldModel

RETURN_PERCENTILES = (0.05, 0.95)


class DreamerAgent(nn.Module):
    """World model, actor, critic, slow critic and the return scale; `act` is the policy
    interface of `agents.run.evaluate`.

    Acting state: {"deter": h of the previous step [B, hidden_dim], "backbone": backbone state}.
    """

    return_scale: torch.Tensor

    def __init__(self, observation_space: gymnasium.Space, action_space: gymnasium.Space, backbone: str,
                 config: DreamerConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.world_model = WorldModel(observation_space, action_space, backbone, config)
        feature_dim, action_dim = self.world_model.policy_feature_dim, self.world_model.action_dim
        self.discrete = self.world_model.discrete
        self.actor = Actor(feature_dim, action_dim, self.discrete, config)
        self.critic = Critic(feature_dim, config)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.register_buffer("return_scale", torch.zeros(()))
        if not self.discrete:
            low = torch.as_tensor(action_space.low, dtype=torch.float32)
            high = torch.as_tensor(action_space.high, dtype=torch.float32)
            bounded = torch.isfinite(low) & torch.isfinite(high)
            # Unbounded dimensions are passed on as the policy's [-1, 1] values.
            self.register_buffer("action_low", torch.where(bounded, low, -1.0), persistent=False)
            self.register_buffer("action_high", torch.where(bounded, high, 1.0), persistent=False)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> dict:
        device = device if device is not None else self.return_scale.device
        return self.world_model.initial_carry(batch_size, device)

    def random_actions(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Uniformly random action vectors [batch_size, action_dim]."""
        if self.discrete:
            index = torch.randint(self.world_model.action_dim, (batch_size,), device=device)
            return F.one_hot(index, self.world_model.action_dim).float()
        return torch.rand(batch_size, self.world_model.action_dim, device=device) * 2.0 - 1.0

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """Action vectors -> what the env takes: indices int64 [B] or values within the Box bounds."""
        if self.discrete:
            return action.argmax(-1)
        return self.action_low + (action + 1.0) * 0.5 * (self.action_high - self.action_low)

    @torch.no_grad()
    def policy_step(self, obs: torch.Tensor, state: dict, is_first: torch.Tensor, deterministic: bool = False,
                    uniform: bool = False) -> tuple[torch.Tensor, dict]:
        """obs [B, ...], is_first [B] -> (action vectors [B, action_dim], next state).

        `deterministic` takes the posterior's and the policy's modes; `uniform` draws random
        actions (replay prefill) while the memory still reads them.
        """
        world_model = self.world_model
        deter = state["deter"].masked_fill(is_first[:, None], 0.0)
        posterior = world_model.posterior_distribution(world_model.encoder(obs), deter)
        latents = (posterior.mode() if deterministic else posterior.sample()).flatten(-2)
        if uniform:
            action = self.random_actions(obs.shape[0], obs.device)
        else:
            features = world_model.policy_features(torch.cat([deter, latents], -1), state["backbone"], is_first)
            policy = self.actor(features)
            action = policy.mode() if deterministic else policy.sample()
        inputs = world_model.sequence_input(latents, action)
        hidden, backbone_state = world_model.backbone.step(inputs, state["backbone"], is_first)
        return action, {"deter": hidden, "backbone": backbone_state}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: dict, is_first: torch.Tensor, deterministic: bool = False):
        """The interface `evaluate` uses: obs [B, ...], is_first [B] -> (env action [B, ...], next state)."""
        action, state = self.policy_step(obs, state, is_first, deterministic)
        return self.env_action(action), state

    def critic_value(self, critic: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return self.world_model.two_hot.decode(critic(features))

    def actor_critic_loss(self, start: dict[str, Any], batch: dict[str, torch.Tensor] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Imagine from the replayed rows in `start` (an `observe` output of the replayed `batch`
        [B, T]) -> (actor loss, critic loss, metrics). The replay value loss needs `batch`."""
        config, world_model = self.config, self.world_model
        with torch.no_grad():
            flat = {key: value.flatten(0, 1) for key, value in start["states"].items()}
            trajectory = world_model.imagine(
                lambda features: self.actor(features).sample(),
                start["deter"].detach().flatten(0, 1), start["latents"].detach().flatten(0, 1),
                flat, start["is_first"].flatten(0, 1), config.imagination_horizon,
            )
            features = trajectory["features"]
            rewards = world_model.reward(trajectory["hidden"])
            continues = world_model.continue_probability(trajectory["hidden"])
            values = self.critic_value(self.critic, features)
            returns = lambda_returns(rewards, continues, values, config.gamma, config.return_lambda)
            discounts = config.gamma * continues
            weights = torch.cat([torch.ones_like(discounts[:, :1]), discounts[:, :-1]], 1).cumprod(1)
            low, high = torch.quantile(returns.flatten(), torch.tensor(RETURN_PERCENTILES, device=returns.device))
            self.return_scale.mul_(config.return_norm_decay).add_((1 - config.return_norm_decay) * (high - low))
            advantages = (returns - values[:, :-1]) / self.return_scale.clamp(min=1.0)
            slow_values = self.critic_value(self.slow_critic, features[:, :-1])
        policy = self.actor(features[:, :-1])
        entropy = policy.entropy()
        actor_loss = -(weights * (policy.log_prob(trajectory["actions"]) * advantages
                                  + config.actor_entropy * entropy)).mean()
        critic_logits = self.critic(features[:, :-1])
        two_hot = world_model.two_hot
        critic_loss = (weights * (two_hot.loss(critic_logits, returns)
                                  + config.slow_critic_reg * two_hot.loss(critic_logits, slow_values))).mean()
        if config.replay_value_loss > 0 and batch is not None:
            critic_loss = critic_loss + config.replay_value_loss * self.replay_value_loss(start, batch, returns[:, 0])
        metrics = {
            "losses/entropy": entropy.mean(), "imagination/advantage": advantages.mean(),
            "imagination/return": returns.mean(), "imagination/reward": rewards.mean(),
            "imagination/continue": continues.mean(), "imagination/return_scale": self.return_scale.clone(),
        }
        return actor_loss, critic_loss, metrics

    def replay_value_loss(self, start: dict[str, Any], batch: dict[str, torch.Tensor],
                          imagined_returns: torch.Tensor) -> torch.Tensor:
        """DreamerV3's critic loss on the replayed rows: two-hot loss of the critic on their
        (detached) features against `replay_returns` bootstrapped from `imagined_returns` [B * T]
        (the return imagined from each row), plus the slow-critic regulariser."""
        config, world_model = self.config, self.world_model
        flat_states = {key: value.flatten(0, 1) for key, value in start["states"].items()}
        features = world_model.policy_features(start["features"].detach().flatten(0, 1), flat_states,
                                               start["is_first"].flatten(0, 1))
        features = features.unflatten(0, start["is_first"].shape)[:, :-1]
        two_hot = world_model.two_hot
        with torch.no_grad():
            bootstrap = imagined_returns.reshape(batch["reward"].shape)
            targets = replay_returns(batch["reward"], batch["terminated"], batch["is_first"], bootstrap,
                                     config.gamma, config.return_lambda)
            slow_values = self.critic_value(self.slow_critic, features)
        logits = self.critic(features)
        return (two_hot.loss(logits, targets) + config.slow_critic_reg * two_hot.loss(logits, slow_values)).mean()

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        decay = self.config.critic_ema_decay
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, 1.0 - decay)

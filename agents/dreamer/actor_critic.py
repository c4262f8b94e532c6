"""The actor and the critic, and the lambda-returns they learn from.

DreamerV3's actor-critic: the actor is trained by REINFORCE (discrete and continuous actions)
with an entropy bonus on lambda-returns of imagined trajectories, bootstrapped from the critic;
the critic is a two-hot symlog regression regularised towards its slow EMA copy. The losses
themselves are in agents/dreamer/agent.py, which imagines with the world model.
"""

from __future__ import annotations

import torch
from torch import nn

from agents.distributions import BoundedNormal, UnimixCategorical
from agents.dreamer.config import DreamerConfig
from agents.dreamer.networks import mlp


class Actor(nn.Module):
    """Features -> policy over action vectors: a unimix categorical (one-hot samples) for
    Discrete spaces, a `BoundedNormal` on [-1, 1]^A for Box spaces."""

    def __init__(self, feature_dim: int, action_dim: int, discrete: bool, config: DreamerConfig):
        super().__init__()
        self.discrete = discrete
        self.unimix = config.unimix
        outputs = action_dim if discrete else 2 * action_dim
        self.net = mlp(feature_dim, config.mlp_units, config.mlp_layers, outputs)

    def forward(self, features: torch.Tensor) -> UnimixCategorical | BoundedNormal:
        outputs = self.net(features)
        if self.discrete:
            return UnimixCategorical(outputs, self.unimix)
        mean_logits, std_logits = outputs.chunk(2, -1)
        return BoundedNormal(mean_logits, std_logits)


class Critic(nn.Module):
    """Features -> two-hot logits over symlog bins (`DreamerAgent.critic_value` decodes them)."""

    def __init__(self, feature_dim: int, config: DreamerConfig):
        super().__init__()
        self.net = mlp(feature_dim, config.mlp_units, config.mlp_layers, config.reward_bins, zero_output=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def replay_returns(rewards: torch.Tensor, terminated: torch.Tensor, is_first: torch.Tensor, bootstrap: torch.Tensor,
                   gamma: float, lambda_: float) -> torch.Tensor:
    """Lambda-returns along replayed windows [B, T] -> [B, T - 1] (rows 0..T-2).

    rewards, terminated: what the env returned for row t's action; is_first: row t starts an
    episode; bootstrap: a value estimate of row t (the imagined return from it).
    R_t = r_t + gamma (1 - terminated_t) ((1 - lambda) b_{t+1} + lambda R_{t+1}), R_{T-1} = b_{T-1};
    where row t + 1 starts a new episode without row t terminating (truncation), R_t = b_t.
    """
    length = rewards.shape[1]
    returns = torch.empty_like(rewards[:, :-1])
    running = bootstrap[:, -1]
    for t in reversed(range(length - 1)):
        target = rewards[:, t] + gamma * (~terminated[:, t]).float() * (
            (1 - lambda_) * bootstrap[:, t + 1] + lambda_ * running)
        truncated = is_first[:, t + 1] & ~terminated[:, t]
        running = torch.where(truncated, bootstrap[:, t], target)
        returns[:, t] = running
    return returns


def lambda_returns(rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, gamma: float,
                   lambda_: float) -> torch.Tensor:
    """rewards, continues [N, H] of imagined steps 0..H-1, values [N, H + 1] of features 0..H ->
    R_i = r_i + gamma c_i ((1 - lambda) v_{i+1} + lambda R_{i+1}), R_H = v_H; returns [N, H]."""
    horizon = rewards.shape[1]
    returns = torch.empty_like(rewards)
    running = values[:, -1]
    for i in reversed(range(horizon)):
        running = rewards[:, i] + gamma * continues[:, i] * ((1 - lambda_) * values[:, i + 1] + lambda_ * running)
        returns[:, i] = running
    return returns

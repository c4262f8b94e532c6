"""Networks shared by memrl's agents: observation encoders and action distributions."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import torch
from torch import nn


def orthogonal_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights and constant bias, the usual PPO initialisation."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class MLPEncoder(nn.Module):
    """Vector observations [..., obs_dim] -> features [..., output_dim].

    `width` 0: two tanh layers of output_dim (CleanRL's). `width` > 0: two ReLU layers of that width,
    then a tanh layer to output_dim: the deeper, wider encoder a task needs when one observation holds
    a conjunction the memory must store (Color-Cubes' first map: which cell holds the target colour).
    """

    def __init__(self, obs_dim: int, output_dim: int, width: int = 0):
        super().__init__()
        if not isinstance(width, int) or width < 0:
            raise ValueError(f"encoder width must be an integer >= 0 (0: two tanh layers of the hidden size), got {width!r}")
        self.output_dim = output_dim
        if width == 0:
            layers = [nn.Linear(obs_dim, output_dim), nn.Tanh(), nn.Linear(output_dim, output_dim), nn.Tanh()]
        else:
            layers = [nn.Linear(obs_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                      nn.Linear(width, output_dim), nn.Tanh()]
        self.net = nn.Sequential(*(orthogonal_init(layer) if isinstance(layer, nn.Linear) else layer
                                   for layer in layers))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class CNNEncoder(nn.Module):
    """Images [..., H, W, C] (uint8 0..255 or float 0..1, channels last) -> features [..., output_dim].

    Three strided convolutions (the Nature-DQN stack), then a linear layer; works for 64x64
    and 84x84 inputs.
    """

    def __init__(self, obs_shape: tuple[int, int, int], output_dim: int):
        super().__init__()
        height, width, channels = obs_shape
        self.output_dim = output_dim
        self.convs = nn.Sequential(
            orthogonal_init(nn.Conv2d(channels, 32, 8, stride=4)),
            nn.ReLU(),
            orthogonal_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            orthogonal_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat_dim = self.convs(torch.zeros(1, channels, height, width)).shape[-1]
        self.project = nn.Sequential(orthogonal_init(nn.Linear(flat_dim, output_dim)), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        leading = obs.shape[:-3]
        images = obs.reshape(-1, *obs.shape[-3:]).permute(0, 3, 1, 2).float()
        if obs.dtype == torch.uint8:
            images = images / 255.0
        return self.project(self.convs(images)).reshape(*leading, self.output_dim)


class DictEncoder(nn.Module):
    """Dict observations (e.g. ManiSkill's cameras and joints) -> features [..., output_dim].

    A `CNNEncoder` per image key ([H, W, C]), one `MLPEncoder` over the vector keys concatenated in
    key order, then their features concatenated and projected by a linear layer + ReLU."""

    def __init__(self, observation_space: gymnasium.spaces.Dict, output_dim: int):
        super().__init__()
        self.output_dim = output_dim
        self.image_keys = [key for key, space in observation_space.items() if len(space.shape) == 3]
        self.vector_keys = [key for key, space in observation_space.items() if len(space.shape) == 1]
        self.image_encoders = nn.ModuleDict(
            {key: CNNEncoder(observation_space[key].shape, output_dim) for key in self.image_keys})
        vector_dim = sum(observation_space[key].shape[0] for key in self.vector_keys)
        self.vector_encoder = MLPEncoder(vector_dim, output_dim) if self.vector_keys else None
        parts = len(self.image_keys) + (1 if self.vector_keys else 0)
        self.project = nn.Sequential(orthogonal_init(nn.Linear(parts * output_dim, output_dim)), nn.ReLU())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        features = [self.image_encoders[key](obs[key]) for key in self.image_keys]
        if self.vector_encoder is not None:
            features.append(self.vector_encoder(torch.cat([obs[key].float() for key in self.vector_keys], dim=-1)))
        return self.project(torch.cat(features, dim=-1))


def is_supported_observation_space(observation_space: gymnasium.Space, allow_dict: bool = True) -> bool:
    """A flat Box, an image Box [H, W, C], or (if `allow_dict`) a Dict of those."""
    if isinstance(observation_space, gymnasium.spaces.Box):
        return len(observation_space.shape) in (1, 3)
    if allow_dict and isinstance(observation_space, gymnasium.spaces.Dict) and len(observation_space.spaces) > 0:
        return all(is_supported_observation_space(space, allow_dict=False) for space in observation_space.values())
    return False


def make_encoder(observation_space: gymnasium.Space, output_dim: int, mlp_width: int = 0) -> nn.Module:
    """An MLP for flat Box observations (`mlp_width`: see MLPEncoder), a CNN for images [H, W, C], a
    `DictEncoder` for a Dict of those; anything else is refused."""
    if not is_supported_observation_space(observation_space):
        raise ValueError(
            f"observation space {observation_space} is not supported; memrl agents take a flat Box "
            "(vector), a Box of shape [H, W, C] (image) or a Dict of those"
        )
    if isinstance(observation_space, gymnasium.spaces.Dict):
        return DictEncoder(observation_space, output_dim)
    if len(observation_space.shape) == 1:
        return MLPEncoder(observation_space.shape[0], output_dim, mlp_width)
    return CNNEncoder(observation_space.shape, output_dim)


class ActionHead(nn.Module):
    """Features -> action distribution: Categorical for Discrete, diagonal Gaussian for Box."""

    def __init__(self, action_space: gymnasium.Space, feature_dim: int):
        super().__init__()
        if isinstance(action_space, gymnasium.spaces.Discrete):
            self.discrete = True
            self.logits = orthogonal_init(nn.Linear(feature_dim, int(action_space.n)), gain=0.01)
        elif isinstance(action_space, gymnasium.spaces.Box) and len(action_space.shape) == 1:
            self.discrete = False
            action_dim = action_space.shape[0]
            self.mean = orthogonal_init(nn.Linear(feature_dim, action_dim), gain=0.01)
            self.log_std = nn.Parameter(torch.zeros(action_dim))
        else:
            raise ValueError(
                f"action space {action_space} is not supported; memrl agents take Discrete or a flat Box"
            )

    def forward(self, features: torch.Tensor) -> torch.distributions.Distribution:
        if self.discrete:
            return torch.distributions.Categorical(logits=self.logits(features))
        mean = self.mean(features)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def log_prob(self, distribution: torch.distributions.Distribution, action: torch.Tensor) -> torch.Tensor:
        log_prob = distribution.log_prob(action)
        return log_prob if self.discrete else log_prob.sum(-1)

    def entropy(self, distribution: torch.distributions.Distribution) -> torch.Tensor:
        entropy = distribution.entropy()
        return entropy if self.discrete else entropy.sum(-1)

    def mode(self, distribution: torch.distributions.Distribution) -> torch.Tensor:
        return distribution.probs.argmax(-1) if self.discrete else distribution.mean


def action_dtype(action_space: gymnasium.Space) -> torch.dtype:
    return torch.int64 if isinstance(action_space, gymnasium.spaces.Discrete) else torch.float32


def action_shape(action_space: gymnasium.Space) -> tuple[int, ...]:
    return () if isinstance(action_space, gymnasium.spaces.Discrete) else tuple(action_space.shape)


def observation_dtype(observation_space: gymnasium.Space) -> torch.dtype:
    return torch.uint8 if observation_space.dtype == np.uint8 else torch.float32


Observation = torch.Tensor | dict[str, torch.Tensor]
"""A batch of observations: one tensor, or a dict of tensors (Dict spaces) with the same leading dims."""


def empty_observations(observation_space: gymnasium.Space, leading_shape: tuple[int, ...],
                       device: torch.device) -> Observation:
    """Zeros for `leading_shape` observations of `observation_space` (a Box, or a Dict of Boxes)."""
    if isinstance(observation_space, gymnasium.spaces.Dict):
        return {key: empty_observations(space, leading_shape, device) for key, space in observation_space.items()}
    return torch.zeros((*leading_shape, *observation_space.shape), dtype=observation_dtype(observation_space),
                       device=device)


def map_observations(function, *observations: Observation) -> Observation:
    """`function` applied to tensor observations, or key by key to dict observations."""
    if isinstance(observations[0], dict):
        return {key: function(*(observation[key] for observation in observations)) for key in observations[0]}
    return function(*observations)

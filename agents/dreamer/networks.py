"""The Dreamer networks the world model and the actor-critic build from: MLP heads, and
DreamerV3's image encoder and decoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from agents.distributions import symlog


def mlp(input_dim: int, units: int, layers: int, output_dim: int | None = None, zero_output: bool = False) -> nn.Sequential:
    """`layers` x (Linear -> LayerNorm -> SiLU), then an optional Linear to `output_dim`
    (zero-initialised for the two-hot heads, so they start out predicting 0)."""
    modules: list[nn.Module] = []
    for layer in range(layers):
        modules += [nn.Linear(input_dim if layer == 0 else units, units), nn.LayerNorm(units), nn.SiLU()]
    if output_dim is not None:
        output = nn.Linear(units if layers > 0 else input_dim, output_dim)
        if zero_output:
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        modules.append(output)
    return nn.Sequential(*modules)


class SymlogEncoder(nn.Module):
    """Vector observations are symlog-squashed before the shared MLP encoder."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(symlog(obs))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of images [N, C, H, W]."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvEncoder(nn.Module):
    """DreamerV3's image encoder: images [..., H, W, C] (uint8 0..255 or float 0..1) -> [..., output_dim].

    Pixels are scaled to [-0.5, 0.5]; four stride-2 convolutions (kernel 4) with c, 2c, 4c, 8c
    channels, each followed by a LayerNorm over channels and SiLU, halve the image four times
    (64x64 -> 4x4); the flattened 8c x H/16 x W/16 grid is the embedding (4,096 for c = 32).
    """

    def __init__(self, obs_shape: tuple[int, int, int], channels: int):
        super().__init__()
        height, width, image_channels = obs_shape
        widths = [image_channels, channels, 2 * channels, 4 * channels, 8 * channels]
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip(widths, widths[1:]):
            layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                       ChannelNorm(out_channels), nn.SiLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.output_dim = self.convs(torch.zeros(1, image_channels, height, width)).shape[-1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        leading = obs.shape[:-3]
        images = obs.reshape(-1, *obs.shape[-3:]).permute(0, 3, 1, 2).float()
        images = (images / 255.0 if obs.dtype == torch.uint8 else images) - 0.5
        return self.convs(images).reshape(*leading, self.output_dim)


class ImageDecoder(nn.Module):
    """Features [..., F] -> images [..., H, W, C] in [0, 1] scale (pixel / 255).

    A linear layer to a (ceil(H/16), ceil(W/16)) grid of 8c channels, four stride-2
    transposed convolutions (8c -> 4c -> 2c -> c -> C), cropped to H x W; `normalise` puts a
    LayerNorm over channels before each hidden SiLU (DreamerV3's decoder).
    """

    def __init__(self, feature_dim: int, obs_shape: tuple[int, int, int], channels: int, normalise: bool = False):
        super().__init__()
        self.height, self.width, image_channels = obs_shape
        self.grid = (math.ceil(self.height / 16), math.ceil(self.width / 16))
        self.start_channels = 8 * channels
        self.project = nn.Linear(feature_dim, self.start_channels * self.grid[0] * self.grid[1])
        widths = [8 * channels, 4 * channels, 2 * channels, channels]
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=not normalise),
                       *([ChannelNorm(out_channels)] if normalise else []), nn.SiLU()]
        layers.append(nn.ConvTranspose2d(channels, image_channels, 4, stride=2, padding=1))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        leading = features.shape[:-1]
        grid = self.project(features.reshape(-1, features.shape[-1]))
        images = self.deconvs(grid.reshape(-1, self.start_channels, *self.grid))
        images = images[:, :, : self.height, : self.width].permute(0, 2, 3, 1)
        return images.reshape(*leading, *images.shape[1:])

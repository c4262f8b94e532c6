"""Distributions and transforms of the DreamerV3 recipe, usable by any agent.

- `symlog` / `symexp`: squash targets of unknown scale (rewards, returns, vector observations).
- `TwoHot`: a categorical over fixed bins in symlog space (255 bins on [-20, 20] by default);
  a scalar is encoded as weights on its two neighbouring bins, decoded as the expected bin.
- `UnimixCategorical`: a categorical mixed with 1% uniform (no log-probability is ever
  -inf), with one-hot samples that pass straight-through gradients to the probabilities.
- `BoundedNormal`: a diagonal Gaussian policy on [-1, 1] (tanh mean, bounded std).
- `categorical_kl` and `free_bits`: KL between grouped categoricals, clipped from below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): identity near 0, logarithmic for large |x|."""
    # Written per sign rather than as sign(x) * log1p(|x|), whose gradient at exactly 0 is 0.
    return torch.where(x >= 0, torch.log1p(x.clamp(min=0)), -torch.log1p((-x).clamp(min=0)))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `symlog`: sign(x) (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """Scalars as two-hot weights over `num_bins` bins spaced evenly in symlog space.

    `encode(values [...]) -> weights [..., num_bins]` puts weight on the two bins around
    symlog(value) so that the expected bin is exactly symlog(value) (values beyond the outer
    bins are clipped to them). `decode(logits [..., num_bins]) -> values [...]` is symexp of
    the expected bin under softmax(logits). `loss(logits, values)` is the cross-entropy
    against the encoded targets, per element [...]. A module only so that `.to(device)` moves
    the bins with the model; it has no parameters.
    """

    bins: torch.Tensor

    def __init__(self, num_bins: int = 255, low: float = -20.0, high: float = 20.0):
        super().__init__()
        if num_bins < 2 or not low < high:
            raise ValueError(f"TwoHot needs num_bins >= 2 and low < high, got {num_bins}, {low}, {high}")
        self.register_buffer("bins", torch.linspace(low, high, num_bins), persistent=False)

    @property
    def num_bins(self) -> int:
        return self.bins.shape[0]

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        bins = self.bins
        target = symlog(values.float()).clamp(bins[0], bins[-1])
        # Index of the bin at or below the target, kept one below the last bin so that the
        # pair (below, below + 1) always exists.
        below = (torch.searchsorted(bins, target.contiguous(), right=True) - 1).clamp(0, self.num_bins - 2)
        lower, upper = bins[below], bins[below + 1]
        upper_weight = ((target - lower) / (upper - lower)).clamp(0.0, 1.0)
        weights = torch.zeros(*values.shape, self.num_bins, device=values.device)
        weights.scatter_(-1, below[..., None], (1.0 - upper_weight)[..., None])
        weights.scatter_add_(-1, below[..., None] + 1, upper_weight[..., None])
        return weights

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        return symexp(logits.softmax(-1) @ self.bins)

    def loss(self, logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return -(self.encode(values) * logits.log_softmax(-1)).sum(-1)


class UnimixCategorical:
    """Independent categoricals over the last axis, each mixed with `unimix` uniform.

    logits [..., K] -> probabilities (1 - unimix) softmax(logits) + unimix / K. `sample()` and
    `mode()` are one-hot [..., K]; `sample()` carries straight-through gradients
    (one_hot + probs - probs.detach()). `log_prob(one_hot)` and `entropy()` are [...].
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.01):
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {unimix}")
        probs = logits.softmax(-1)
        if unimix > 0.0:
            probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
        self.probs = probs
        self.logits = probs.log()

    def sample(self) -> torch.Tensor:
        flat = self.probs.detach().reshape(-1, self.probs.shape[-1])
        index = torch.multinomial(flat, 1).reshape(self.probs.shape[:-1])
        one_hot = F.one_hot(index, self.probs.shape[-1]).to(self.probs.dtype)
        return one_hot + self.probs - self.probs.detach()

    def mode(self) -> torch.Tensor:
        return F.one_hot(self.probs.argmax(-1), self.probs.shape[-1]).to(self.probs.dtype)

    def log_prob(self, one_hot: torch.Tensor) -> torch.Tensor:
        return (one_hot * self.logits).sum(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.probs * self.logits).sum(-1)


class BoundedNormal:
    """Diagonal Gaussian for actions in [-1, 1]^A: mean tanh(mean_logits), std in
    [min_std, max_std]. `sample()` is clipped to [-1, 1]; `log_prob` and `entropy` sum over A."""

    def __init__(self, mean_logits: torch.Tensor, std_logits: torch.Tensor, min_std: float = 0.1, max_std: float = 1.0):
        std = (max_std - min_std) * torch.sigmoid(std_logits + 2.0) + min_std
        self.normal = torch.distributions.Normal(torch.tanh(mean_logits), std)

    def sample(self) -> torch.Tensor:
        return self.normal.sample().clamp(-1.0, 1.0)

    def mode(self) -> torch.Tensor:
        return self.normal.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.normal.log_prob(action).sum(-1)

    def entropy(self) -> torch.Tensor:
        return self.normal.entropy().sum(-1)


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of grouped categoricals given normalised log-probabilities [..., G, K],
    summed over the G groups -> [...]."""
    return (logits_p.exp() * (logits_p - logits_q)).sum((-2, -1))


def free_bits(kl: torch.Tensor, free: float) -> torch.Tensor:
    """max(free, kl) per element: below `free` nats the loss is flat and gives no gradient,
    so the KL term stops squeezing latents that already carry little information."""
    return kl.clamp(min=free)

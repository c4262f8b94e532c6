"""A DreamerV3-style world-model agent whose sequence model is any memrl backbone.

Read top to bottom: config, world model, actor and critic, the agent (acting), the trainer.

Time alignment. Replay row t of an env holds
    obs_t, is_first_t (obs_t starts an episode), action_t (taken after seeing obs_t),
    reward_t and terminated_t (what the env returned for action_t).
The world model, for every row t:
    z_t  ~ q(z | enc(obs_t))                    posterior from the encoder alone ("parallel");
                                                the RSSM's also reads d_t (see below)
    h_t, state = backbone(concat(z_t, a_t), state, reset=is_first_t)
    d_t  = 0 if is_first_t else h_{t-1}         the memory of everything before obs_t (at the
                                                window's first row: the stored memory, below)
    feature s_t = concat(d_t, z_t)              what the actor, the critic and the decoder read
                                                (`actor_critic_full_state`: the actor and critic
                                                also read the backbone state carried into t, R2I)
    prior p(z_t | d_t)                          (so the prior head maps h_{t-1} to z_t)
    decoder(s_t) -> obs_t,  reward(h_t) -> reward_t,  continue(h_t) -> not terminated_t
So reward and continuation are predicted from h_t, which has read a_t: they belong to the
transition out of step t. A truncated episode has continue target 1 (truncation is not
termination); the observation it ended on (`final_obs`) is not stored.

Because the posterior reads the encoder alone, `world_model="parallel"` runs the backbone over
the whole [B, T] window in one `forward` call (R2I / Drama style), so S5, Mamba or attention
train in parallel. `world_model="rssm"` is the classic reference: the posterior reads
concat(enc(obs_t), d_t), so the sequence is walked one `step` at a time (use the GRU backbone
for DreamerV3's RSSM).

Memory across windows (DreamerV3's replay context). With `replay_state` (the default) every
replay row also stores the memory the agent had before that step: h_{t-1} and the backbone
state carried into step t ("memory.deter", "memory.backbone.<key>"; fixed-size for any
backbone). A replayed window enters its first row with that stored memory instead of the
initial state, so the world model and imagination see what happened before the window; a
window whose first row is_first resets as usual. After each update the memory the world model
computed for the window's later rows is written back to the replay at those rows, so stored
states do not stay as stale as the policy that collected them. `burn_in` > 0 replays that many
extra rows before each trained window without gradient (they refresh its start state).
Gradients still stop at the window's start (truncated backpropagation): a cue older than the
window is only learnable while the memory keeps it by itself.

Imagination starts from every replayed row: (d_t, z_t) and the backbone state carried into
row t, applying reset=is_first_t at the first imagined step. The RSSM walk yields those states
for free; for the parallel world model they are collected by a second, gradient-free walk of
`backbone.step` along the window (exactly equal to `forward`'s, by the backbone contract,
and cheaper than the imagination itself: B rows x T steps against B*T rows x H steps).

Actor-critic (DreamerV3): H imagined steps with `backbone.step` and prior samples, rewards and
continuation from the heads, lambda-returns bootstrapped from the critic, advantages divided
by max(1, S) with S the EMA of the 5th-95th percentile range of the returns, REINFORCE for
discrete and continuous actions with entropy bonus, a two-hot symlog critic regularised
towards its slow EMA copy; optionally (`replay_value_loss`, DreamerV3's repval) the critic also
learns lambda-returns along the replayed windows, bootstrapped from the returns imagined there.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.distributions import BoundedNormal, TwoHot, UnimixCategorical, categorical_kl, free_bits, symlog
from agents.networks import make_encoder
from agents.replay import SAMPLING, SequenceReplay
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
from memory import State, make_backbone

WORLD_MODELS = ("parallel", "rssm")
IMAGE_NETWORKS = ("nature", "dreamerv3")
RETURN_PERCENTILES = (0.05, 0.95)


@dataclass
class DreamerConfig:
    """Dreamer hyperparameters (DreamerV3's names and defaults where they apply)."""

    world_model: str = field(default="parallel", metadata={"help": "parallel (posterior from the encoder alone; backbone forward over whole windows) or rssm (posterior also reads the memory; sequential)"})
    hidden_dim: int = field(default=256, metadata={"help": "backbone hidden size (the deterministic memory h)"})
    backbone_options: dict = field(default_factory=dict, metadata={"help": "extra backbone options as JSON, e.g. '{\"num_layers\": 1}'"})
    encoder_dim: int = field(default=256, metadata={"help": "observation embedding size"})
    mlp_units: int = field(default=256, metadata={"help": "width of the MLP heads (decoder, reward, continue, actor, critic)"})
    mlp_layers: int = field(default=2, metadata={"help": "hidden layers of the MLP heads"})
    decoder_channels: int = field(default=32, metadata={"help": "channels of the last transposed convolution of the image decoder (x2 per stage); with image_network dreamerv3 also the encoder's first convolution"})
    image_network: str = field(default="nature", metadata={"help": f"image encoder and decoder: {', '.join(IMAGE_NETWORKS)} (nature: the Nature-DQN CNN to encoder_dim features and a plain transposed-CNN decoder; dreamerv3: four stride-2 convolutions with LayerNorm + SiLU, the flattened grid as embedding, and the mirrored decoder)"})
    input_layer: bool = field(default=False, metadata={"help": "a Linear + LayerNorm + SiLU layer of mlp_units between concat(z, a) and the sequence model (DreamerV3's RSSM input layer)"})
    num_latents: int = field(default=32, metadata={"help": "categorical latents per step"})
    num_classes: int = field(default=32, metadata={"help": "classes per categorical latent"})
    unimix: float = field(default=0.01, metadata={"help": "uniform mixed into latent and discrete action distributions"})
    reward_bins: int = field(default=255, metadata={"help": "two-hot bins (symlog space, [-20, 20]) of the reward and critic heads"})
    kl_dyn_scale: float = field(default=0.5, metadata={"help": "weight of KL(sg(posterior) || prior)"})
    kl_rep_scale: float = field(default=0.1, metadata={"help": "weight of KL(posterior || sg(prior))"})
    free_nats: float = field(default=1.0, metadata={"help": "free bits: KL terms below this many nats are not penalised"})
    world_model_lr: float = field(default=1e-4, metadata={"help": "world model Adam learning rate"})
    actor_lr: float = field(default=3e-5, metadata={"help": "actor Adam learning rate"})
    critic_lr: float = field(default=3e-5, metadata={"help": "critic Adam learning rate"})
    world_model_grad_clip: float = field(default=1000.0, metadata={"help": "world model gradient-norm clip"})
    actor_critic_grad_clip: float = field(default=100.0, metadata={"help": "actor and critic gradient-norm clip"})
    imagination_horizon: int = field(default=15, metadata={"help": "imagined steps per start state"})
    gamma: float = field(default=0.997, metadata={"help": "discount factor"})
    return_lambda: float = field(default=0.95, metadata={"help": "lambda of the lambda-returns"})
    actor_entropy: float = field(default=3e-4, metadata={"help": "actor entropy bonus"})
    return_norm_decay: float = field(default=0.99, metadata={"help": "EMA decay of the 5th-95th percentile return range"})
    critic_ema_decay: float = field(default=0.98, metadata={"help": "EMA decay of the slow critic"})
    actor_critic_full_state: bool = field(default=False, metadata={"help": "actor and critic also read the backbone's whole state (R2I's input; complex states as real and imaginary parts), not only (d, z)"})
    replay_value_loss: float = field(default=0.0, metadata={"help": "weight of DreamerV3's critic loss on replayed rows (lambda-returns of the replayed rewards, bootstrapped from the imagined returns; DreamerV3: 0.3); 0 leaves it out"})
    slow_critic_reg: float = field(default=1.0, metadata={"help": "weight of the critic's regulariser towards the slow critic"})
    batch_size: int = field(default=16, metadata={"help": "replayed windows per update"})
    batch_length: int = field(default=64, metadata={"help": "steps per replayed window"})
    train_ratio: float = field(default=512.0, metadata={"help": "replayed steps (batch_size x batch_length per update) per env step"})
    replay_capacity: int = field(default=1_000_000, metadata={"help": "env steps the replay holds (all envs together)"})
    replay_state: bool = field(default=True, metadata={"help": "store the memory (h and the backbone state) the agent had before each step and start replayed windows from it, refreshed by every replay of the rows (DreamerV3's replay context); false starts every window from the initial state"})
    burn_in: int = field(default=0, metadata={"help": "replayed steps run without gradient before each trained window of batch_length steps (they refresh its start state)"})
    replay_sampling: str = field(default="uniform", metadata={"help": f"window sampling: {', '.join(SAMPLING)}"})
    recency_exponent: float = field(default=1.0, metadata={"help": "recency sampling: a window's weight is (age + 1) ** -exponent"})
    prefill: int = field(default=2500, metadata={"help": "env steps (all envs) collected before training; random actions on a fresh run"})
    replay_checkpoint_mb: float = field(default=64.0, metadata={"help": "store the replay in checkpoints when it is at most this many MiB; otherwise a resumed run refills it with `prefill` policy steps first"})
    log_every: int = field(default=10, metadata={"help": "write losses to tensorboard every N updates"})
    checkpoint_every: int = field(default=1000, metadata={"help": "save a checkpoint every N updates (and at the end)"})

    def validate(self) -> None:
        """Raise ValueError, in one sentence, for the first setting out of range."""
        if self.world_model not in WORLD_MODELS:
            raise ValueError(f"unknown world_model {self.world_model!r}; choose one of: {', '.join(WORLD_MODELS)}")
        if self.image_network not in IMAGE_NETWORKS:
            raise ValueError(f"unknown image_network {self.image_network!r}; choose one of: {', '.join(IMAGE_NETWORKS)}")
        if self.replay_sampling not in SAMPLING:
            raise ValueError(f"unknown replay_sampling {self.replay_sampling!r}; choose one of: {', '.join(SAMPLING)}")
        positive = ("hidden_dim", "encoder_dim", "mlp_units", "mlp_layers", "decoder_channels", "num_latents",
                    "num_classes", "world_model_lr", "actor_lr", "critic_lr", "imagination_horizon", "batch_size",
                    "batch_length", "train_ratio", "replay_capacity", "log_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.reward_bins < 2:
            raise ValueError(f"reward_bins must be at least 2, got {self.reward_bins}")
        for name in ("gamma", "return_lambda", "return_norm_decay", "critic_ema_decay", "unimix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("prefill", "burn_in"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")


# -- networks --------------------------------------------------------------------------


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


# -- world model -------------------------------------------------------------------------


class WorldModel(nn.Module):
    """Encoder, categorical posterior and prior, backbone memory, decoder, reward and continue heads.

    See the module docstring for the time alignment. Actions enter as vectors: one-hot for
    Discrete spaces, values in [-1, 1] for Box spaces.
    """

    def __init__(self, observation_space: gymnasium.Space, action_space: gymnasium.Space, backbone: str,
                 config: DreamerConfig):
        super().__init__()
        self.config = config
        self.sequential = config.world_model == "rssm"
        self.obs_shape = tuple(observation_space.shape)
        self.image = len(self.obs_shape) == 3
        dreamerv3_images = self.image and config.image_network == "dreamerv3"
        if dreamerv3_images:
            self.encoder = ConvEncoder(self.obs_shape, config.decoder_channels)
        else:
            encoder = make_encoder(observation_space, config.encoder_dim)
            self.encoder = encoder if self.image else SymlogEncoder(encoder)
        embedding_dim = self.encoder.output_dim if dreamerv3_images else config.encoder_dim
        self.discrete = isinstance(action_space, gymnasium.spaces.Discrete)
        self.action_dim = int(action_space.n) if self.discrete else int(action_space.shape[0])
        self.latent_dim = config.num_latents * config.num_classes
        self.feature_dim = config.hidden_dim + self.latent_dim
        self.full_state = config.actor_critic_full_state
        posterior_input = embedding_dim + (config.hidden_dim if self.sequential else 0)
        self.posterior = mlp(posterior_input, config.mlp_units, 1, self.latent_dim)
        sequence_input_dim = self.latent_dim + self.action_dim
        self.input_layer = mlp(sequence_input_dim, config.mlp_units, 1) if config.input_layer else nn.Identity()
        self.backbone = make_backbone(backbone, config.mlp_units if config.input_layer else sequence_input_dim,
                                      config.hidden_dim, **config.backbone_options)
        self.prior = mlp(config.hidden_dim, config.mlp_units, 1, self.latent_dim)
        if self.image:
            self.decoder = ImageDecoder(self.feature_dim, self.obs_shape, config.decoder_channels,
                                        normalise=dreamerv3_images)
        else:
            self.decoder = mlp(self.feature_dim, config.mlp_units, config.mlp_layers, self.obs_shape[0])
        self.reward_head = mlp(config.hidden_dim, config.mlp_units, config.mlp_layers, config.reward_bins, zero_output=True)
        self.continue_head = mlp(config.hidden_dim, config.mlp_units, config.mlp_layers, 1)
        self.two_hot = TwoHot(config.reward_bins)
        no_reset = torch.zeros(1, dtype=torch.bool)
        self.policy_feature_dim = self.feature_dim + (
            self.state_features(self.backbone.initial_state(1), no_reset).shape[-1] if self.full_state else 0)

    def latent_distribution(self, logits: torch.Tensor) -> UnimixCategorical:
        """Flat logits [..., num_latents * num_classes] -> grouped categorical [..., num_latents, num_classes]."""
        grouped = logits.unflatten(-1, (self.config.num_latents, self.config.num_classes))
        return UnimixCategorical(grouped, self.config.unimix)

    def posterior_distribution(self, embedding: torch.Tensor, deter: torch.Tensor | None) -> UnimixCategorical:
        """The RSSM's posterior reads the memory d too; the parallel one ignores `deter`."""
        inputs = torch.cat([embedding, deter], -1) if self.sequential else embedding
        return self.latent_distribution(self.posterior(inputs))

    def state_features(self, state: State, reset: torch.Tensor) -> torch.Tensor:
        """The backbone's whole state as detached real features [N, S] (complex leaves as real and
        imaginary parts; the initial state where reset [N]); S = 0 for a stateless backbone."""
        initial = self.backbone.initial_state(reset.shape[0], reset.device)
        parts = []
        for key in sorted(state):
            value = torch.where(reset.view(-1, *[1] * (state[key].dim() - 1)), initial[key], state[key]).detach()
            parts.append((torch.view_as_real(value) if value.is_complex() else value).flatten(1).float())
        return torch.cat(parts, -1) if parts else torch.zeros(reset.shape[0], 0, device=reset.device)

    def policy_features(self, features: torch.Tensor, state: State, reset: torch.Tensor) -> torch.Tensor:
        """What the actor and critic read [N, policy_feature_dim]: features (d, z) [N, F], with
        `actor_critic_full_state` followed by `state_features(state, reset)`."""
        return torch.cat([features, self.state_features(state, reset)], -1) if self.full_state else features

    def sequence_input(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """What the sequence model reads at a step: concat(z, a) [..., latent_dim + action_dim],
        through the input layer when there is one."""
        return self.input_layer(torch.cat([latents, actions], -1))

    def prior_distribution(self, deter: torch.Tensor) -> UnimixCategorical:
        return self.latent_distribution(self.prior(deter))

    def reward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Expected reward of the transition out of the step whose backbone output is `hidden` [..., H] -> [...]."""
        return self.two_hot.decode(self.reward_head(hidden))

    def continue_probability(self, hidden: torch.Tensor) -> torch.Tensor:
        """Probability that the episode goes on after that transition [...]."""
        return torch.sigmoid(self.continue_head(hidden).squeeze(-1))

    def initial_carry(self, batch_size: int, device: torch.device | str | None = None) -> dict:
        """The memory before any step: {"deter": zeros [B, hidden_dim], "backbone": the backbone's initial state}."""
        return {"deter": torch.zeros(batch_size, self.config.hidden_dim, device=device),
                "backbone": self.backbone.initial_state(batch_size, device)}

    def observe(self, obs: torch.Tensor, actions: torch.Tensor, is_first: torch.Tensor,
                start: dict | None = None, collect_states: bool = True) -> dict[str, Any]:
        """Posterior pass over replayed windows, each started from the memory carried into its first row.

        obs [B, T, ...], actions [B, T, action_dim], is_first bool [B, T]; `start` is the carry
        {"deter" [B, hidden_dim], "backbone": State} going into row 0 (the stored replay state;
        None: the initial state). A window whose first row is_first resets either way. Returns
        a dict of "posterior", "prior" (distributions over [B, T, num_latents, num_classes]),
        "latents" [B, T, latent_dim], "deter" d [B, T, hidden_dim], "hidden" h [B, T, hidden_dim],
        "features" [B, T, feature_dim], "states": backbone state carried into each row, every
        leaf [B, T, ...] (detached: imagination and the replay write-back read it; None when
        the parallel model is asked not to `collect_states`), "final": the carry going into the
        row after the window (detached), and "is_first".
        """
        batch_size = is_first.shape[0]
        start = start if start is not None else self.initial_carry(batch_size, obs.device)
        embedding = self.encoder(obs)
        if self.sequential:
            return self._observe_sequential(embedding, actions, is_first, start)
        posterior = self.posterior_distribution(embedding, None)
        latents = posterior.sample().flatten(-2)
        inputs = self.sequence_input(latents, actions)
        hidden, final_state = self.backbone(inputs, start["backbone"], is_first)
        deter = torch.cat([start["deter"][:, None], hidden[:, :-1]], 1).masked_fill(is_first[..., None], 0.0)
        states = self.states_before_each_row(inputs.detach(), is_first, start["backbone"]) if collect_states else None
        final = {"deter": hidden[:, -1].detach(),
                 "backbone": {key: value.detach() for key, value in final_state.items()}}
        return self._assemble(posterior, latents, deter, hidden, states, final, is_first)

    @torch.no_grad()
    def states_before_each_row(self, inputs: torch.Tensor, is_first: torch.Tensor, state: State | None = None) -> State:
        """The backbone state carried into each row [B, T, ...] of a window of inputs [B, T, D]
        entered with `state` (None: the initial state)."""
        batch_size, length = is_first.shape
        state = state if state is not None else self.backbone.initial_state(batch_size, inputs.device)
        collected = []
        for t in range(length):
            collected.append(state)
            _, state = self.backbone.step(inputs[:, t], state, is_first[:, t])
        return {key: torch.stack([entry[key] for entry in collected], 1) for key in state}

    def _observe_sequential(self, embedding: torch.Tensor, actions: torch.Tensor, is_first: torch.Tensor,
                            start: dict) -> dict[str, Any]:
        length = is_first.shape[1]
        state, previous = start["backbone"], start["deter"]
        logits, latents, deters, hiddens, states = [], [], [], [], []
        for t in range(length):
            states.append({key: value.detach() for key, value in state.items()})
            deter = previous.masked_fill(is_first[:, t, None], 0.0)
            posterior = self.posterior_distribution(embedding[:, t], deter)
            latent = posterior.sample().flatten(-2)
            previous, state = self.backbone.step(self.sequence_input(latent, actions[:, t]), state, is_first[:, t])
            logits.append(posterior.logits)
            latents.append(latent)
            deters.append(deter)
            hiddens.append(previous)
        # The stacked logits are already unimixed log-probabilities: unimix 0 keeps them as they are.
        posterior = UnimixCategorical(torch.stack(logits, 1), unimix=0.0)
        stacked_states = {key: torch.stack([entry[key] for entry in states], 1) for key in state}
        final = {"deter": previous.detach(), "backbone": {key: value.detach() for key, value in state.items()}}
        return self._assemble(posterior, torch.stack(latents, 1), torch.stack(deters, 1), torch.stack(hiddens, 1),
                              stacked_states, final, is_first)

    def _assemble(self, posterior, latents, deter, hidden, states, final, is_first) -> dict[str, Any]:
        return {
            "is_first": is_first,
            "final": final,
            "posterior": posterior,
            "prior": self.prior_distribution(deter),
            "latents": latents,
            "deter": deter,
            "hidden": hidden,
            "features": torch.cat([deter, latents], -1),
            "states": states,
        }

    def loss(self, batch: dict[str, torch.Tensor], start: dict | None = None, collect_states: bool = True
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """World-model loss on a replayed batch [B, T] entered with the carry `start` (see
        `observe`) -> (scalar loss, per-term means, observe() output)."""
        config = self.config
        outputs = self.observe(batch["obs"], batch["action"], batch["is_first"], start, collect_states)
        prediction = self.decoder(outputs["features"])
        if self.image:
            target = batch["obs"].float() / 255.0 if batch["obs"].dtype == torch.uint8 else batch["obs"]
            reconstruction = (prediction - target).square().sum((-3, -2, -1))
        else:
            reconstruction = (prediction - symlog(batch["obs"])).square().sum(-1)
        reward = self.two_hot.loss(self.reward_head(outputs["hidden"]), batch["reward"])
        continues = F.binary_cross_entropy_with_logits(
            self.continue_head(outputs["hidden"]).squeeze(-1), (~batch["terminated"]).float(), reduction="none"
        )
        posterior_logits, prior_logits = outputs["posterior"].logits, outputs["prior"].logits
        dynamics = free_bits(categorical_kl(posterior_logits.detach(), prior_logits), config.free_nats)
        representation = free_bits(categorical_kl(posterior_logits, prior_logits.detach()), config.free_nats)
        total = (reconstruction + reward + continues + config.kl_dyn_scale * dynamics
                 + config.kl_rep_scale * representation).mean()
        terms = {
            "rec": reconstruction.mean(), "rew": reward.mean(), "con": continues.mean(),
            "dyn": dynamics.mean(), "rep": representation.mean(),
            "kl": categorical_kl(posterior_logits, prior_logits).mean(),
        }
        return total, terms, outputs

    def imagine(self, policy: Callable[[torch.Tensor], torch.Tensor], deter: torch.Tensor, latents: torch.Tensor,
                state: State, reset: torch.Tensor, horizon: int) -> dict[str, torch.Tensor]:
        """Roll the prior forward `horizon` steps from N start rows, choosing actions with `policy`.

        deter [N, hidden_dim] and latents [N, latent_dim] are the start features, `state` the
        backbone state carried into the start row and `reset` [N] its is_first flag.
        `policy(features [N, policy_feature_dim]) -> action vectors [N, action_dim]`. Returns
        "features" [N, H + 1, policy_feature_dim] (what the actor and critic read: (d, z) first),
        "latents" [N, H + 1, latent_dim], "actions" [N, H, action_dim]
        and "hidden" [N, H, hidden_dim]: hidden[:, i] has read (latents[:, i], actions[:, i])
        and predicts the reward and continuation of imagined step i.
        """
        features = [self.policy_features(torch.cat([deter, latents], -1), state, reset)]
        all_latents, actions, hiddens = [latents], [], []
        for _ in range(horizon):
            action = policy(features[-1])
            hidden, state = self.backbone.step(self.sequence_input(latents, action), state, reset)
            reset = torch.zeros_like(reset)
            latents = self.prior_distribution(hidden).sample().flatten(-2)
            features.append(self.policy_features(torch.cat([hidden, latents], -1), state, reset))
            all_latents.append(latents)
            actions.append(action)
            hiddens.append(hidden)
        return {"features": torch.stack(features, 1), "latents": torch.stack(all_latents, 1),
                "actions": torch.stack(actions, 1), "hidden": torch.stack(hiddens, 1)}


# -- actor and critic --------------------------------------------------------------------


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


# -- the agent ---------------------------------------------------------------------------


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


# -- the trainer -------------------------------------------------------------------------

CARRY_PREFIX = "memory."
"""Replay fields of the stored memory: "memory.deter" and "memory.backbone.<state key>"."""


def flatten_carry(carry: dict) -> dict[str, torch.Tensor]:
    """{"deter": d, "backbone": {key: leaf}} -> flat replay fields {"memory.deter": d, "memory.backbone.key": leaf}."""
    flat = {f"{CARRY_PREFIX}deter": carry["deter"]}
    flat.update({f"{CARRY_PREFIX}backbone.{key}": value for key, value in carry["backbone"].items()})
    return flat


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
        self.replay.add(row)
        self.statistics.record(info, writer, self.global_step)

    def replayed_world_model_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any], dict]:
        """Sample burn_in + batch_length rows per window, enter each window with its stored
        memory (replay_state) or the initial state, run the burn-in rows without gradient, and
        return `WorldModel.loss` of the trained rows and those rows. With replay_state, the memory the model
        has just computed for every replayed row after the first is written back to the replay."""
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
        loss, terms, outputs = world_model.loss(batch, start)
        if config.replay_state:
            carried.append({"deter": outputs["deter"].detach(), "backbone": outputs["states"]})
            refreshed = {key: torch.cat([part[key] for part in map(flatten_carry, carried)], 1)[:, 1:]
                         for key in flatten_carry(carried[0])}
            self.replay.overwrite(envs, rows[:, 1:], refreshed)
        return loss, terms, outputs, batch

    def train_step(self) -> dict[str, float]:
        """One update of the world model, actor and critic on a replayed batch."""
        config, agent = self.config, self.agent
        world_model_loss, terms, start, batch = self.replayed_world_model_loss()
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
        nn.utils.clip_grad_norm_(agent.world_model.parameters(), config.world_model_grad_clip)
        nn.utils.clip_grad_norm_(agent.actor.parameters(), config.actor_critic_grad_clip)
        nn.utils.clip_grad_norm_(agent.critic.parameters(), config.actor_critic_grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        agent.update_slow_critic()
        metrics = {f"losses/world_model/{name}": value for name, value in terms.items()}
        metrics.update({"losses/world_model/total": world_model_loss, "losses/actor": actor_loss,
                        "losses/critic": critic_loss})
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
                    if writer is not None and self.update % config.log_every == 0:
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

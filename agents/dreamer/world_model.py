"""The world model: encoder, categorical posterior and prior, a memrl backbone as the
sequence model, decoder, reward and continue heads.

Time alignment. Replay row t of an env holds
    obs_t, is_first_t (obs_t starts an episode), action_t (taken after seeing obs_t),
    reward_t and terminated_t (what the env returned for action_t).
The world model, for every row t:
    z_t  ~ q(z | enc(obs_t))                    posterior from the encoder alone ("parallel");
                                                the RSSM's also reads d_t (see below)
    h_t, state = backbone(concat(z_t, a_t), state, reset=is_first_t)
    d_t  = 0 if is_first_t else h_{t-1}         the memory of everything before obs_t (at the
                                                window's first row: the stored memory, see
                                                agents/dreamer/trainer.py)
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

Imagination starts from every replayed row: (d_t, z_t) and the backbone state carried into
row t, applying reset=is_first_t at the first imagined step. The RSSM walk yields those states
for free; for the parallel world model they are collected by a second, gradient-free walk of
`backbone.step` along the window (exactly equal to `forward`'s, by the backbone contract,
and cheaper than the imagination itself: B rows x T steps against B*T rows x H steps).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium
import torch
import torch.nn.functional as F
from torch import nn

from agents.distributions import TwoHot, UnimixCategorical, categorical_kl, free_bits, symlog
from agents.dreamer.config import DreamerConfig
from agents.dreamer.networks import ConvEncoder, ImageDecoder, SymlogEncoder, mlp
from agents.networks import make_encoder
from memory import State, make_backbone


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
        row after the window (attached to the graph: a stored gradient can flow into it), and "is_first".
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
        final = {"deter": hidden[:, -1], "backbone": final_state}
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
        final = {"deter": previous, "backbone": state}
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

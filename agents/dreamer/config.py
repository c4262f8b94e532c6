"""Dreamer hyperparameters: DreamerV3's names and defaults where they apply."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.replay import SAMPLING

WORLD_MODELS = ("parallel", "rssm")
IMAGE_NETWORKS = ("nature", "dreamerv3")


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
    stored_gradient: bool = field(default=False, metadata={"help": "carry gradients across replayed windows: store each window's loss gradient with respect to the memory it started from at that row, and add it to the loss of any later-sampled window that ends just before the row (needs replay_state)"})
    burn_in: int = field(default=0, metadata={"help": "replayed steps run without gradient before each trained window of batch_length steps (they refresh its start state)"})
    replay_sampling: str = field(default="uniform", metadata={"help": f"window sampling: {', '.join(SAMPLING)}"})
    recency_exponent: float = field(default=1.0, metadata={"help": "recency sampling: a window's weight is (age + 1) ** -exponent"})
    prefill: int = field(default=2500, metadata={"help": "env steps (all envs) collected before training; random actions on a fresh run"})
    replay_checkpoint_mb: float = field(default=64.0, metadata={"help": "store the replay in checkpoints when it is at most this many MiB; otherwise a resumed run refills it with `prefill` policy steps first"})
    log_every: int = field(default=10, metadata={"help": "write losses and the smoothed episodic return to tensorboard every N updates"})
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
        if self.stored_gradient and not self.replay_state:
            raise ValueError("stored_gradient needs replay_state: the gradients are stored beside the replayed memory")
        for name in ("prefill", "burn_in"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")

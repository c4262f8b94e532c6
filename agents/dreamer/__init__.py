"""A DreamerV3-style world-model agent whose sequence model is any memrl backbone.

Read in this order, each file top to bottom (DreamerV3's split):
    config.py        `DreamerConfig`, every hyperparameter with its `--help`
    networks.py      the MLP heads and the image encoder and decoder
    world_model.py   `WorldModel`: time alignment, posterior and prior, observing and imagining
    actor_critic.py  `Actor`, `Critic` and the lambda-returns they learn from
    agent.py         `DreamerAgent`: ties the world model to the actor-critic; acting and the
                     actor-critic losses on imagined trajectories
    trainer.py       `DreamerTrainer`: replay (with the stored memory), updates, checkpoints, the loop
The world model and the actor-critic know nothing of each other; the agent imports both.
"""

from agents.dreamer.agent import DreamerAgent
from agents.dreamer.config import DreamerConfig
from agents.dreamer.trainer import DreamerTrainer

__all__ = ["DreamerAgent", "DreamerConfig", "DreamerTrainer"]

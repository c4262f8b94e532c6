"""Agents over memrl's backbones: recurrent PPO, the Dreamer-style agent, the train-agent CLI."""

"""POPGym's MultiarmedBandit (Morad et al., ICLR 2023) as a batched torch env, equal to popgym 1.0.7."""

from __future__ import annotations

import torch

from envs.base import BatchedEnv


class MultiarmedBandit(BatchedEnv):
    """Episodic Bernoulli bandits (popgym's MultiarmedBandit).

    Reset draws each arm's payout probability uniformly in [0, 1) (float32). Every step pulls
    one arm: it pays out with its probability (a uniform draw below it), earning +1/L, and
    otherwise earns -1/L (L = episode_length). The episode is truncated after L steps (popgym
    truncates, it never terminates). Observation (2): one-hot of popgym's Discrete(2)
    observation, 1 = the last pull paid out (0 at reset). Actions (num_bandits): an arm.
    popgym's observation does not show which arm was pulled (popgym sets
    `obs_requires_prev_action`, and its baselines add the previous action); memrl's agents see
    only the observation, as popgym's env gives it.

    success = every pull was on a best arm (the oracle, which reads the probabilities, always
    pulls one). chance_success = 1/num_bandits: the first pull is made before any observation
    differs, so no policy, memory or not, picks a best arm there with probability above
    1/num_bandits; `memoryless_action` (always arm 0) reaches it.
    """

    obs_dim = 2
    obs_low = 0.0
    obs_high = 1.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        *,
        num_bandits: int = 10,
        episode_length: int = 200,
    ):
        for name, value in (("num_bandits", num_bandits), ("episode_length", episode_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_actions = num_bandits
        self.max_episode_steps = episode_length
        self.chance_success = 1 / num_bandits
        super().__init__(num_envs, device, seed)
        self.payout_probability = torch.zeros(num_envs, num_bandits, device=self.device)
        """Each arm's payout probability, float32 [N, num_bandits]."""
        self.paid_out = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_best = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _draw_payout_probabilities(self) -> torch.Tensor:
        return self.random(self.num_envs, self.num_actions)

    def _draw_pull(self) -> torch.Tensor:
        """The uniform draw each pull compares with its arm's probability, float [N]."""
        return self.random(self.num_envs)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self.payout_probability = torch.where(mask[:, None], self._draw_payout_probabilities(), self.payout_probability)
        self.paid_out.masked_fill_(mask, 0)
        self.all_best |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probability = self.payout_probability.gather(1, action.long()[:, None]).squeeze(1)
        paid_out = self._draw_pull() < probability
        self.paid_out = paid_out.long()
        self.all_best &= probability == self.payout_probability.max(1).values
        reward = torch.where(paid_out, 1.0 / self.max_episode_steps, -1.0 / self.max_episode_steps)
        return reward, torch.zeros_like(paid_out), self.all_best.clone()

    def _observe(self) -> torch.Tensor:
        return (self.paid_out[:, None] == torch.arange(2, device=self.device)).float()

    def oracle_action(self) -> torch.Tensor:
        return self.payout_probability.argmax(1)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.shape[0], dtype=torch.int64, device=obs.device)


LEVELS = {"easy": (10, 200), "medium": (20, 400), "hard": (30, 600)}
"""popgym 1.0.7's levels: (num_bandits, episode_length)."""

PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    f"popgym-multiarmed-bandit-{level}": (MultiarmedBandit, {"num_bandits": arms, "episode_length": length})
    for level, (arms, length) in LEVELS.items()
}

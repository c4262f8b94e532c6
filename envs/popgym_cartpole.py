"""POPGym's PositionOnlyCartPole and NoisyPositionOnlyCartPole as a batched torch env, equal to popgym 1.0.7."""

from __future__ import annotations

import math

import torch

from envs.base import BatchedEnv

GRAVITY, CART_MASS, POLE_MASS, POLE_HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
"""gymnasium 1.x CartPoleEnv's constants (Euler integration), which popgym's env subclasses."""
TOTAL_MASS = CART_MASS + POLE_MASS
POLE_MASS_LENGTH = POLE_MASS * POLE_HALF_LENGTH
X_LIMIT, ANGLE_LIMIT = 2.4, 12 * 2 * math.pi / 360
ORACLE_GAINS = (1.0, 1.5, 18.0, 3.0)
"""Push right when this weighting of (x, x_dot, theta, theta_dot) is positive: balances every
episode of 2000 tried for 600 steps."""


def check_length_and_noise(max_episode_length: int, noise_sigma: float) -> None:
    """Raise ValueError, in one sentence, for an episode length that is not a positive integer or a
    noise level below 0 (the settings of the position-only CartPole and Pendulum)."""
    if isinstance(max_episode_length, bool) or not isinstance(max_episode_length, int) or max_episode_length <= 0:
        raise ValueError(f"max_episode_length must be a positive integer, got {max_episode_length!r}")
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, (int, float)) or not noise_sigma >= 0:
        raise ValueError(f"noise_sigma must be a number >= 0, got {noise_sigma!r}")


class PositionOnlyCartPole(BatchedEnv):
    """CartPole seen through the cart position and pole angle only (popgym's PositionOnlyCartPole,
    and its Noisy variant when noise_sigma > 0).

    Dynamics are gymnasium 1.x's CartPoleEnv in float64 (Euler steps of 0.02 s, force +-10 N,
    start uniform in [-0.05, 0.05]^4, termination when |x| > 2.4 or |theta| > 12 degrees).
    Every step earns +1/L, the step the pole falls on included (popgym maps gymnasium's reward
    1 to 1/L), so a return is the fraction of the L = max_episode_length steps survived; the
    episode is truncated after L steps. Observation (2): float32 (x, theta); with noise_sigma,
    Gaussian noise of that standard deviation (drawn in float64, added in float32) is added to
    both and the result is clipped to +-(4.8, 0.419), as popgym does at reset and every step.
    Actions (2): 0 push left, 1 push right. memrl reports a pole that falls on the very last step
    as terminated only; popgym's flags are then both True.

    success = the pole stayed up for all L steps. `oracle_action` reads the velocities (a linear
    state feedback, ORACLE_GAINS). `memoryless_action` pushes towards the pole's lean and keeps
    it up about 41 steps; it never lasted 200 steps without noise and once in 1884 episodes with
    noise 0.1. chance_success = 0.002 bounds what it reaches, not what every memoryless policy
    could (no better one is known).
    """

    obs_dim = 2
    num_actions = 2
    obs_low = -2 * X_LIMIT
    obs_high = 2 * X_LIMIT
    chance_success = 0.002

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        *,
        max_episode_length: int = 200,
        noise_sigma: float = 0.0,
    ):
        check_length_and_noise(max_episode_length, noise_sigma)
        self.max_episode_steps = max_episode_length
        self.noise_sigma = float(noise_sigma)
        super().__init__(num_envs, device, seed)
        self.state = torch.zeros(num_envs, 4, dtype=torch.float64, device=self.device)
        """(x, x_dot, theta, theta_dot) of every env, float64 [N, 4]."""
        self.observation = torch.zeros(num_envs, 2, device=self.device)
        self.observation_bound = torch.tensor([2 * X_LIMIT, 2 * ANGLE_LIMIT], dtype=torch.float32, device=self.device)

    def _draw_initial_state(self) -> torch.Tensor:
        """float64 [N, 4] uniform in [-0.05, 0.05)."""
        return torch.rand(self.num_envs, 4, dtype=torch.float64, generator=self.generator, device=self.device) * 0.1 - 0.05

    def _draw_noise(self, used: torch.Tensor) -> torch.Tensor:
        """Observation noise, float64 [N, 2] of standard deviation noise_sigma; drawn for every env,
        used where `used` [N] is True (so the draws do not depend on which envs restart)."""
        standard = torch.randn(self.num_envs, 2, dtype=torch.float64, generator=self.generator, device=self.device)
        return standard * self.noise_sigma

    def _observation_of_state(self, used: torch.Tensor) -> torch.Tensor:
        """The observation of the current state, float32 [N, 2], noise drawn as `_draw_noise(used)`."""
        position_and_angle = self.state[:, [0, 2]].float()
        if self.noise_sigma == 0:
            return position_and_angle
        noisy = position_and_angle + self._draw_noise(used).float()
        return torch.maximum(torch.minimum(noisy, self.observation_bound), -self.observation_bound)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self.state = torch.where(mask[:, None], self._draw_initial_state(), self.state)
        self.observation = torch.where(mask[:, None], self._observation_of_state(mask), self.observation)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = torch.where(action == 1, FORCE, -FORCE).double()
        cos_theta, sin_theta = torch.cos(theta), torch.sin(theta)
        temp = (force + POLE_MASS_LENGTH * torch.square(theta_dot) * sin_theta) / TOTAL_MASS
        theta_acc = (GRAVITY * sin_theta - cos_theta * temp) / (
            POLE_HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * torch.square(cos_theta) / TOTAL_MASS)
        )
        x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos_theta / TOTAL_MASS
        self.state = torch.stack([x + TAU * x_dot, x_dot + TAU * x_acc, theta + TAU * theta_dot, theta_dot + TAU * theta_acc], 1)
        terminated = (self.state[:, 0].abs() > X_LIMIT) | (self.state[:, 2].abs() > ANGLE_LIMIT)
        self.observation = self._observation_of_state(torch.ones_like(terminated))
        reward = torch.full((self.num_envs,), 1.0 / self.max_episode_steps, device=self.device)
        return reward, terminated, ~terminated

    def _observe(self) -> torch.Tensor:
        return self.observation.clone()

    def oracle_action(self) -> torch.Tensor:
        weights = torch.tensor(ORACLE_GAINS, dtype=torch.float64, device=self.device)
        return ((self.state * weights).sum(1) > 0).long()

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs[:, 1] > 0).long()


PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    **{
        f"popgym-position-only-cart-pole-{level}": (PositionOnlyCartPole, {"max_episode_length": length, "noise_sigma": 0.0})
        for level, length in (("easy", 200), ("medium", 400), ("hard", 600))
    },
    **{
        f"popgym-noisy-position-only-cart-pole-{level}": (PositionOnlyCartPole, {"max_episode_length": 200, "noise_sigma": sigma})
        for level, sigma in (("easy", 0.1), ("medium", 0.2), ("hard", 0.3))
    },
}
"""popgym 1.0.7's levels: episode length 200/400/600 without noise; noise 0.1/0.2/0.3 at length 200."""

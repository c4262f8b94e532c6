"""POPGym's PositionOnlyPendulum and NoisyPositionOnlyPendulum as a batched torch env, equal to popgym 1.0.7."""

from __future__ import annotations

import math

import torch

from envs.base import BatchedEnv
from envs.popgym_cartpole import check_length_and_noise

GRAVITY_TERM, TORQUE_TERM, DT, MAX_SPEED, MAX_TORQUE = 15.0, 3.0, 0.05, 8.0, 2.0
"""gymnasium 1.x PendulumEnv's dynamics (g = 10, m = l = 1): theta_ddot = 3g/(2l) sin(theta) + 3/(m l^2) u,
a semi-implicit Euler step of 0.05 s, the speed clipped to +-8 rad/s and the torque to +-2 N m."""
POPGYM_WORST_REWARD = -16.2736044
"""popgym's lower bound of gymnasium's reward (-(pi^2 + 0.1 * 8^2 + 0.001 * 2^2)), as popgym writes it."""
UPRIGHT_ANGLE, UPRIGHT_SPEED = 0.05, 0.25
"""success: the episode ends with |theta| <= 0.05 rad (theta = 0 upright) and |theta_dot| <= 0.25 rad/s."""
SWING_UP_ENERGY = GRAVITY_TERM
"""The oracle's energy target: theta_dot^2 / 2 + 15 cos(theta) equals 15 upright at rest."""
BALANCE_GAINS = (10.0, 2.5)
"""The oracle's torque near upright: -(10 theta + 2.5 theta_dot), clipped."""
BALANCE_ANGLE = 0.6
"""The oracle balances (instead of pumping energy) within this angle of upright (rad)."""


def angle_normalize(angle: torch.Tensor) -> torch.Tensor:
    """The angle in [-pi, pi) (gymnasium's angle_normalize: 0 is upright)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


class PositionOnlyPendulum(BatchedEnv):
    """Pendulum swing-up seen through the pole's position only (popgym's PositionOnlyPendulum, and
    its Noisy variant when noise_sigma > 0).

    Dynamics are gymnasium 1.x's PendulumEnv in float64: the state (theta, theta_dot) starts uniform
    in [-pi, pi] x [-1, 1]; each step clips the torque to [-2, 2] (in the action's float32, as
    gymnasium does with a float32 action), costs angle_normalize(theta)^2 + 0.1 theta_dot^2 +
    0.001 u^2, then theta_dot += (15 sin(theta) + 3 u) 0.05 (clipped to +-8) and theta +=
    0.05 theta_dot. popgym maps gymnasium's reward -cost in [-16.2736044, 0] linearly onto
    [-1/L, +1/L] (L = max_episode_length), so a return lies in [-1, 1]. The episode never
    terminates and is truncated after L steps. Observation (2): float32 (cos theta, sin theta);
    with noise_sigma, Gaussian noise of that standard deviation (drawn in float64, added in
    float32) is added to both and the result clipped to [-1, 1], as popgym does at reset and
    every step. Actions: float [N, 1] torques (a Box [-2, 2]); values outside are clipped.

    success = the episode ends upright and slow (|theta| <= UPRIGHT_ANGLE, |theta_dot| <=
    UPRIGHT_SPEED; popgym defines no success). `oracle_action` reads the state: it pumps energy
    towards that of rest upright, then balances with a PD law (every episode of 2000 tried, at
    each level, ends upright). chance_success = UPRIGHT_ANGLE UPRIGHT_SPEED / pi = 0.004 bounds
    every policy without memory (noise or not) whose pendulum never reaches the speed limit: its
    torque depends on theta and independent randomness only, so given that randomness a step is
    two shears of the (theta, theta_dot) cylinder (theta_dot += f(theta), then theta += 0.05
    theta_dot), which preserve area; the state's density thus never exceeds the start's,
    1/(4 pi), and the success region has area 4 UPRIGHT_ANGLE UPRIGHT_SPEED. The speed clip
    breaks the argument (it piles states onto |theta_dot| = 8), so for policies that spin the
    pendulum that fast it is not a proof (no better memoryless policy is known).
    `memoryless_action` (full torque against sin theta) and zero torque end upright in 0.1% to
    0.45% of 2000 episodes per level.
    """

    obs_dim = 2
    action_dim = 1
    action_low = -MAX_TORQUE
    action_high = MAX_TORQUE
    obs_low = -1.0
    obs_high = 1.0
    chance_success = UPRIGHT_ANGLE * UPRIGHT_SPEED / math.pi

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
        self.state = torch.zeros(num_envs, 2, dtype=torch.float64, device=self.device)
        """(theta, theta_dot) of every env, float64 [N, 2]."""
        self.observation = torch.zeros(num_envs, 2, device=self.device)

    def _draw_initial_state(self) -> torch.Tensor:
        """float64 [N, 2]: theta uniform in [-pi, pi), theta_dot in [-1, 1)."""
        unit = torch.rand(self.num_envs, 2, dtype=torch.float64, generator=self.generator, device=self.device)
        high = torch.tensor([math.pi, 1.0], dtype=torch.float64, device=self.device)
        return (2 * unit - 1) * high

    def _draw_noise(self, used: torch.Tensor) -> torch.Tensor:
        """Observation noise, float64 [N, 2] of standard deviation noise_sigma; drawn for every env,
        used where `used` [N] is True (so the draws do not depend on which envs restart)."""
        standard = torch.randn(self.num_envs, 2, dtype=torch.float64, generator=self.generator, device=self.device)
        return standard * self.noise_sigma

    def _observation_of_state(self, used: torch.Tensor) -> torch.Tensor:
        """The observation of the current state, float32 [N, 2], noise drawn as `_draw_noise(used)`."""
        theta = self.state[:, 0]
        position = torch.stack([torch.cos(theta), torch.sin(theta)], 1).float()
        if self.noise_sigma == 0:
            return position
        return (position + self._draw_noise(used).float()).clamp(-1.0, 1.0)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self.state = torch.where(mask[:, None], self._draw_initial_state(), self.state)
        self.observation = torch.where(mask[:, None], self._observation_of_state(mask), self.observation)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta, speed = self.state.unbind(1)
        # gymnasium clips and scales the torque in the action's float32 before adding float64 terms.
        torque = action[:, 0].float().clamp(-MAX_TORQUE, MAX_TORQUE)
        cost = angle_normalize(theta).square() + 0.1 * speed.square() + (0.001 * torque.square()).double()
        speed = (speed + (GRAVITY_TERM * torch.sin(theta) + (TORQUE_TERM * torque).double()) * DT).clamp(-MAX_SPEED, MAX_SPEED)
        self.state = torch.stack([theta + speed * DT, speed], 1)
        self.observation = self._observation_of_state(torch.ones_like(theta, dtype=torch.bool))
        half_range = -POPGYM_WORST_REWARD / 2
        reward = ((half_range - cost) / half_range / self.max_episode_steps).float()
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return reward, terminated, self._upright()

    def _upright(self) -> torch.Tensor:
        """bool [N]: the pendulum is in the success region (see the class docstring)."""
        theta, speed = self.state.unbind(1)
        return (angle_normalize(theta).abs() <= UPRIGHT_ANGLE) & (speed.abs() <= UPRIGHT_SPEED)

    def _observe(self) -> torch.Tensor:
        return self.observation.clone()

    def oracle_action(self) -> torch.Tensor:
        """Energy pumping far from upright, PD balance near it; float32 [N, 1]."""
        theta, speed = angle_normalize(self.state[:, 0]), self.state[:, 1]
        energy = 0.5 * speed.square() + GRAVITY_TERM * torch.cos(theta)
        pump = torch.where(energy < SWING_UP_ENERGY, torch.sign(speed), -torch.sign(speed))
        pump = torch.where(speed == 0, 1.0, pump) * MAX_TORQUE
        balance = -(BALANCE_GAINS[0] * theta + BALANCE_GAINS[1] * speed)
        torque = torch.where(theta.abs() <= BALANCE_ANGLE, balance, pump).clamp(-MAX_TORQUE, MAX_TORQUE)
        return torque.float()[:, None]

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Full torque towards upright (against sin theta); float32 [N, 1]."""
        return -MAX_TORQUE * torch.sign(obs[:, 1:2])


PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    **{
        f"popgym-position-only-pendulum-{level}": (PositionOnlyPendulum, {"max_episode_length": length, "noise_sigma": 0.0})
        for level, length in (("easy", 200), ("medium", 150), ("hard", 100))
    },
    **{
        f"popgym-noisy-position-only-pendulum-{level}": (PositionOnlyPendulum, {"max_episode_length": 200, "noise_sigma": sigma})
        for level, sigma in (("easy", 0.1), ("medium", 0.2), ("hard", 0.3))
    },
}
"""popgym 1.0.7's levels: episode length 200/150/100 without noise; noise 0.1/0.2/0.3 at length 200."""

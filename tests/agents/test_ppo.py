"""Recurrent PPO: checkpoints, exact resume, divergence handling, truncation bootstrapping."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from agents.ppo import PPOConfig, PPOTrainer
from agents.run import TrainingDiverged, evaluate, load_checkpoint, seed_everything
from envs.registry import make_env

SMALL = PPOConfig(num_steps=16, hidden_dim=16, num_minibatches=2, update_epochs=2, checkpoint_every=2)


def make_trainer(run_dir: Path | None, total_steps: int = 8 * 16 * 4, backbone: str = "gru",
                 config: PPOConfig = SMALL, env_name: str = "tmaze") -> PPOTrainer:
    seed_everything(3)
    env = make_env(env_name, num_envs=8, seed=3)
    return PPOTrainer(config, env, total_steps, torch.device("cpu"), backbone, run_dir=run_dir, progress=False)


def parameters(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.agent.state_dict().items()}


class Interrupt(Exception):
    """Raised from a callback to simulate a run killed between updates."""


def test_checkpoint_round_trip(tmp_path):
    trainer = make_trainer(tmp_path, total_steps=8 * 16 * 2)
    trainer.train(checkpoint_extra={"config": {"note": "kept"}})
    payload = load_checkpoint(tmp_path)
    assert payload["config"] == {"note": "kept"}
    assert payload["update"] == 2 and payload["global_step"] == 8 * 16 * 2
    restored = make_trainer(None)
    restored.restore(payload)
    for name, value in parameters(trainer).items():
        torch.testing.assert_close(parameters(restored)[name], value, rtol=0, atol=0)
    assert restored.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()
    assert not list(tmp_path.glob("*.tmp")), "no temp file may be left behind"


@pytest.mark.parametrize("backbone", ["gru", "s5"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, backbone):
    uninterrupted = make_trainer(tmp_path / "a", backbone=backbone)
    uninterrupted.train()

    def stop_after_second_update(trainer, metrics):
        if trainer.update == 2:
            raise Interrupt

    interrupted = make_trainer(tmp_path / "b", backbone=backbone)
    with pytest.raises(Interrupt):
        interrupted.train(on_update=stop_after_second_update)
    resumed = make_trainer(tmp_path / "b", backbone=backbone)
    torch.manual_seed(12345)  # a different RNG state: the checkpoint must restore the right one
    resumed.restore(load_checkpoint(tmp_path / "b"))
    assert resumed.update == 2
    resumed.train()
    assert resumed.global_step == uninterrupted.global_step
    expected = parameters(uninterrupted)
    for name, value in parameters(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=f"parameter {name} differs")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path)

    def poison_after_first_checkpoint(trainer, metrics):
        if trainer.update == 2:
            with torch.no_grad():
                trainer.agent.critic.weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="became nan.*update 3"):  # the critic weights, before the update
        trainer.train(on_update=poison_after_first_checkpoint)
    payload = load_checkpoint(tmp_path)
    assert payload["update"] == 2
    assert all(torch.isfinite(value).all() for value in payload["agent"].values())


def test_truncated_steps_get_the_value_of_their_final_observation():
    # A T-maze whose time limit is shorter than the corridor: every episode is truncated.
    trainer = make_trainer(None, env_name="tmaze-medium")
    trainer.env.max_episode_steps = 5
    rollout = trainer.collect(writer=None)
    assert rollout.truncated.any() and not rollout.terminated.any()
    assert (rollout.final_values[rollout.truncated] != 0).all()
    assert (rollout.final_values[~rollout.truncated] == 0).all()
    assert torch.equal(rollout.is_first[:, 1:], rollout.truncated[:, :-1])


def test_evaluate_counts_each_envs_first_episode():
    trainer = make_trainer(None)
    env = make_env("tmaze", num_envs=12, seed=5)
    result = evaluate(trainer.agent, env)
    assert result["episodes"] == 12
    assert 0.0 <= result["success_rate"] <= 1.0
    assert result["steps"] >= 12 * result["length_mean"] / 12


def test_ppo_trains_on_a_native_env_with_continuous_actions():
    """PositionOnlyPendulum's Box torques: a diagonal Gaussian policy, rollouts crossing truncations, evaluation."""
    trainer = make_trainer(None, total_steps=8 * 16 * 7, env_name="popgym-position-only-pendulum-hard")
    before = parameters(trainer)
    metrics = trainer.train()
    assert trainer.update == 7 and trainer.statistics.episodes == 8  # 112 steps per env: every env truncated once
    assert all(math.isfinite(value) for value in metrics.values())
    changed = [name for name, value in parameters(trainer).items() if not torch.equal(value, before[name])]
    assert "actor.log_std" in changed and "actor.mean.weight" in changed
    rollout = trainer.collect(writer=None)
    assert rollout.actions.shape == (8, 16, 1) and rollout.actions.dtype == torch.float32
    assert rollout.actions.std() > 0.5  # a Gaussian of standard deviation near 1, not one fixed torque
    result = evaluate(trainer.agent, make_env("popgym-position-only-pendulum-hard", num_envs=4, seed=6))
    assert result["episodes"] == 4 and result["length_mean"] == 100 and -1.0 <= result["return_mean"] <= 1.0


class CameraAndJointsEnv:
    """A native env whose observation is a dict like ManiSkill's rgb+joints: the vector as `joints`, and
    the same numbers drawn as the brightness of two 36 x 36 RGB images (`base_camera`, `hand_camera`)."""

    def __init__(self, env):
        self.env = env
        size = (36, 36, 3)
        self.single_observation_space = gymnasium.spaces.Dict({
            "base_camera": gymnasium.spaces.Box(0, 255, size, np.uint8),
            "hand_camera": gymnasium.spaces.Box(0, 255, size, np.uint8),
            "joints": env.single_observation_space,
        })

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _observation(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        brightness = (vector[:, :3].clamp(0, 1) * 255).to(torch.uint8)  # [N, 3] -> one colour per image
        image = brightness[:, None, None, :].expand(-1, 36, 36, -1).contiguous()
        return {"base_camera": image, "hand_camera": 255 - image, "joints": vector}

    def reset(self, *args, **kwargs):
        obs, info = self.env.reset(*args, **kwargs)
        return self._observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "final_obs": self._observation(info["final_obs"])}
        return self._observation(obs), reward, terminated, truncated, info


def test_ppo_trains_on_dict_observations_with_a_cnn_per_camera_and_an_mlp_for_joints(tmp_path):
    seed_everything(3)
    env = CameraAndJointsEnv(make_env("tmaze", num_envs=8, seed=3))
    trainer = PPOTrainer(SMALL, env, 8 * 16 * 2, torch.device("cpu"), "gru", run_dir=tmp_path, progress=False)
    encoder = trainer.agent.encoder
    assert sorted(encoder.image_encoders) == ["base_camera", "hand_camera"] and encoder.vector_keys == ["joints"]
    rollout = trainer.collect(writer=None)
    assert rollout.obs["base_camera"].shape == (8, 16, 36, 36, 3) and rollout.obs["base_camera"].dtype == torch.uint8
    assert rollout.obs["joints"].shape == (8, 16, env.single_observation_space["joints"].shape[0])
    assert rollout.obs["base_camera"].float().std() > 0  # the images were written, not left as zeros
    before = parameters(trainer)
    metrics = trainer.train()
    assert all(math.isfinite(value) for value in metrics.values())
    changed = {name for name, value in parameters(trainer).items() if not torch.equal(value, before[name])}
    for part in ("encoder.image_encoders.base_camera.convs.0.weight",
                 "encoder.image_encoders.hand_camera.convs.0.weight",
                 "encoder.vector_encoder.net.0.weight", "encoder.project.0.weight"):
        assert part in changed
    payload = load_checkpoint(tmp_path)
    assert payload["carry"]["obs"]["hand_camera"].shape == (8, 36, 36, 3)


def test_only_ppo_takes_dict_observations():
    from agents.train import UsageError, check_spaces

    env = CameraAndJointsEnv(make_env("tmaze", num_envs=2, seed=3))
    check_spaces(env, "ppo")
    with pytest.raises(UsageError, match="the dreamer agent takes one Box observation, and this env gives a Dict "
                                         r"\(base_camera, hand_camera, joints\); use --agent ppo") as error:
        check_spaces(env, "dreamer")
    assert "\n" not in str(error.value)


def test_without_truncation_bootstrap_a_timeout_ends_the_return():
    config = PPOConfig(num_steps=16, hidden_dim=16, num_minibatches=2, update_epochs=2, bootstrap_truncated=False)
    trainer = make_trainer(None, env_name="tmaze-medium", config=config)
    trainer.env.max_episode_steps = 5
    rollout = trainer.collect(writer=None)
    assert rollout.truncated.any() and (rollout.final_values == 0).all()
    _, returns = trainer.advantages_and_returns(rollout)
    # An episode that ends at a step without a bootstrap has a return of exactly that step's reward.
    torch.testing.assert_close(returns[rollout.truncated], rollout.rewards[rollout.truncated])
    bootstrapping = make_trainer(None, env_name="tmaze-medium")
    bootstrapping.env.max_episode_steps = 5
    bootstrapped = bootstrapping.collect(writer=None)
    _, returns = bootstrapping.advantages_and_returns(bootstrapped)
    assert not torch.allclose(returns[bootstrapped.truncated], bootstrapped.rewards[bootstrapped.truncated])


def test_encoder_width_gives_two_relu_layers_of_that_width_and_bad_widths_are_refused():
    config = PPOConfig(num_steps=16, hidden_dim=16, num_minibatches=2, update_epochs=2, encoder_width=48)
    trainer = make_trainer(None, config=config)
    linears = [layer for layer in trainer.agent.encoder.net if isinstance(layer, torch.nn.Linear)]
    assert [layer.out_features for layer in linears] == [48, 48, 16]
    assert sum(isinstance(layer, torch.nn.ReLU) for layer in trainer.agent.encoder.net) == 2
    before = parameters(trainer)
    trainer.train()
    assert not torch.equal(parameters(trainer)["encoder.net.0.weight"], before["encoder.net.0.weight"])
    with pytest.raises(ValueError, match="encoder width must be an integer >= 0"):
        make_trainer(None, config=PPOConfig(encoder_width=-1))


def test_head_width_puts_a_relu_torso_on_memory_and_observation_before_the_heads():
    config = PPOConfig(num_steps=16, hidden_dim=16, num_minibatches=2, update_epochs=2, head_width=40)
    trainer = make_trainer(None, config=config)
    agent = trainer.agent
    linears = [layer for layer in agent.torso if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(32, 40), (40, 40)]
    assert agent.actor.logits.in_features == 40 and agent.critic.in_features == 40
    # The window pass (training) and the step-by-step pass (acting) give the same policy and values.
    generator = torch.Generator().manual_seed(0)
    obs = torch.rand(8, 6, trainer.env.obs_dim, generator=generator)
    is_first = torch.rand(8, 6, generator=generator) < 0.3
    with torch.no_grad():
        distribution, values = agent(obs, agent.initial_state(8), is_first)
        state = agent.initial_state(8)
        for t in range(6):
            torch.testing.assert_close(agent.value(obs[:, t], state, is_first[:, t]), values[:, t])
            step_distribution, step_values, state = agent.step(obs[:, t], state, is_first[:, t])
            torch.testing.assert_close(step_distribution.logits, distribution.logits[:, t])
            torch.testing.assert_close(step_values, values[:, t])
    before = parameters(trainer)
    trainer.train()
    assert not torch.equal(parameters(trainer)["torso.0.weight"], before["torso.0.weight"])
    with pytest.raises(ValueError, match="head width must be an integer >= 0"):
        make_trainer(None, config=PPOConfig(head_width=-1))

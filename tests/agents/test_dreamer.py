"""The Dreamer-style agent: time alignment, imagination, returns, training, checkpoints, learning."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import gymnasium
import pytest
import torch
import torch.nn.functional as F

from agents.distributions import UnimixCategorical
from agents.dreamer import DreamerAgent, DreamerConfig, DreamerTrainer
from agents.dreamer.actor_critic import lambda_returns, replay_returns
from agents.dreamer.trainer import flatten_carry, unflatten_carry
from agents.run import TrainingDiverged, evaluate, load_checkpoint, seed_everything
from envs.gymnasium_adapter import GymnasiumVectorEnv
from envs.registry import make_env
from memory import BACKBONES

TINY = DreamerConfig(
    hidden_dim=16, encoder_dim=16, mlp_units=16, mlp_layers=1, num_latents=4, num_classes=4, reward_bins=31,
    batch_size=4, batch_length=8, train_ratio=32, prefill=32, imagination_horizon=5, replay_capacity=2000,
    world_model_lr=1e-3, actor_lr=1e-3, critic_lr=1e-3, log_every=1, checkpoint_every=4,
)
BACKBONE_OPTIONS = {"s4": {"num_layers": 1, "state_size": 8}, "s5": {"num_layers": 1, "state_size": 8},
                    "mamba": {"num_layers": 1, "state_size": 4},
                    "transformer": {"num_layers": 1, "num_heads": 2, "window": 8},
                    "memory_tokens": {"num_layers": 1, "num_heads": 2, "num_tokens": 2},
                    "ffm": {"memory_size": 8, "context_size": 2}, "shm": {"memory_dim": 8},
                    "gtrxl": {"num_layers": 1, "num_heads": 2, "memory_length": 8},
                    "lru": {"num_layers": 1, "state_size": 8}, "mingru": {"num_layers": 1},
                    "mamba2": {"num_layers": 1, "state_size": 4, "head_dim": 16, "chunk_size": 8},
                    "gated_deltanet": {"num_layers": 1, "num_heads": 2, "chunk_size": 8},
                    "mlstm": {"num_layers": 1, "num_heads": 2, "chunk_size": 8}}
EVERY_BACKBONE = sorted(BACKBONES)


def make_trainer(run_dir: Path | None, total_steps: int = 96, backbone: str = "gru", config: DreamerConfig = TINY,
                 env=None) -> DreamerTrainer:
    seed_everything(5)
    env = env if env is not None else make_env("tmaze", num_envs=4, seed=5, corridor_length=3)
    config = dataclasses.replace(config, backbone_options=BACKBONE_OPTIONS.get(backbone, {}))
    return DreamerTrainer(config, env, total_steps, torch.device("cpu"), backbone, run_dir=run_dir, progress=False)


def replayed_batch(trainer: DreamerTrainer, batch_size: int = 4) -> dict[str, torch.Tensor]:
    while not trainer.replay.can_sample(trainer.config.batch_length):
        trainer.env_step(writer=None)
    return trainer.replay.sample(batch_size, trainer.config.batch_length)


def parameters(trainer: DreamerTrainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.agent.state_dict().items()}


class Interrupt(Exception):
    """Raised from a callback to simulate a run killed between updates."""


# -- time alignment and imagination --------------------------------------------------------


def test_deter_is_the_previous_hidden_and_zero_at_episode_starts():
    trainer = make_trainer(None)
    torch.manual_seed(0)
    batch = replayed_batch(trainer, batch_size=16)
    assert batch["is_first"][:, 1:].any(), "the windows must cross episode starts for this test"
    outputs = trainer.agent.world_model.observe(batch["obs"], batch["action"], batch["is_first"])
    deter, hidden, is_first = outputs["deter"], outputs["hidden"], batch["is_first"]
    assert (deter[:, 0] == 0).all()
    assert (deter[is_first] == 0).all()
    carried = ~is_first[:, 1:]
    torch.testing.assert_close(deter[:, 1:][carried], hidden[:, :-1][carried])
    assert (hidden[:, :-1][carried] != 0).any()
    features = outputs["features"]
    assert features.shape == (16, TINY.batch_length, TINY.hidden_dim + TINY.num_latents * TINY.num_classes)


def test_replay_rows_hold_the_action_taken_after_the_observation_and_its_reward():
    trainer = make_trainer(None)
    batch = replayed_batch(trainer, batch_size=32)
    env = trainer.env
    obs, action, reward, terminated = batch["obs"], batch["action"].argmax(-1), batch["reward"], batch["terminated"]
    at_junction = obs[..., 3] > 0.5
    # Turning at the junction ends the episode: +1 or -0.01, and the next row starts a new episode.
    turned = at_junction & (action != 0)
    assert torch.equal(terminated, turned)
    assert ((reward[turned] == 1.0) | (reward[turned] == -0.01)).all()
    assert batch["is_first"][:, 1:][turned[:, :-1]].all()
    # Moving forward in the corridor is free and advances x by 1 / L in the next row.
    moved = ~at_junction[:, :-1] & (action[:, :-1] == 0) & ~batch["is_first"][:, 1:]
    assert (reward[:, :-1][moved] == 0).all()
    torch.testing.assert_close((obs[:, 1:, 0] - obs[:, :-1, 0])[moved],
                               torch.full_like(obs[:, 1:, 0][moved], 1 / env.corridor_length))


@pytest.mark.parametrize("backbone", EVERY_BACKBONE)
def test_imagination_with_step_equals_the_same_rollout_through_forward(backbone):
    """Imagine from the state collected at row t; then run `forward` from the initial state over
    the replayed rows 0..t-1 followed by the imagined (latent, action) pairs: same hidden, same prior."""
    trainer = make_trainer(None, backbone=backbone)
    world_model = trainer.agent.world_model
    torch.manual_seed(1)
    batch = replayed_batch(trainer, batch_size=6)
    start_row, horizon = 5, 4
    with torch.no_grad():
        outputs = world_model.observe(batch["obs"], batch["action"], batch["is_first"])
        state = {key: value[:, start_row] for key, value in outputs["states"].items()}
        trajectory = world_model.imagine(
            lambda features: trainer.agent.actor(features).sample(),
            outputs["deter"][:, start_row], outputs["latents"][:, start_row], state,
            batch["is_first"][:, start_row], horizon,
        )
        replayed_inputs = torch.cat([outputs["latents"], batch["action"]], -1)[:, :start_row]
        imagined_inputs = torch.cat([trajectory["latents"][:, :-1], trajectory["actions"]], -1)
        resets = torch.cat([batch["is_first"][:, : start_row + 1],
                            torch.zeros(6, horizon - 1, dtype=torch.bool)], 1)
        hidden, _ = world_model.backbone(torch.cat([replayed_inputs, imagined_inputs], 1),
                                         world_model.backbone.initial_state(6), resets)
    torch.testing.assert_close(trajectory["hidden"], hidden[:, start_row:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(world_model.prior_distribution(trajectory["hidden"]).logits,
                               world_model.prior_distribution(hidden[:, start_row:]).logits, rtol=1e-4, atol=1e-5)
    assert trajectory["features"].shape == (6, horizon + 1, world_model.feature_dim)
    torch.testing.assert_close(trajectory["features"][:, 1:, : TINY.hidden_dim], trajectory["hidden"])


def test_rssm_posterior_reads_the_memory_and_walks_the_window_step_by_step():
    config = dataclasses.replace(TINY, world_model="rssm")
    trainer = make_trainer(None, config=config)
    world_model = trainer.agent.world_model
    batch = replayed_batch(trainer)
    embedding = world_model.encoder(batch["obs"][:, 0])
    deter = torch.randn(4, TINY.hidden_dim)
    assert not torch.allclose(world_model.posterior_distribution(embedding, deter).probs,
                              world_model.posterior_distribution(embedding, torch.zeros_like(deter)).probs)
    outputs = world_model.observe(batch["obs"], batch["action"], batch["is_first"])
    carried = ~batch["is_first"][:, 1:]
    torch.testing.assert_close(outputs["deter"][:, 1:][carried], outputs["hidden"][:, :-1][carried])
    # The state carried into row t + 1 is h_t even where row t + 1 starts an episode (step applies the reset).
    torch.testing.assert_close(outputs["states"]["hidden"][:, 1:, 0], outputs["hidden"][:, :-1])


# -- memory stored in the replay ------------------------------------------------------------


@pytest.fixture
def mode_latents(monkeypatch):
    """Latents and discrete actions take their modes, so two passes over the same rows are comparable."""
    monkeypatch.setattr(UnimixCategorical, "sample", UnimixCategorical.mode)


def test_the_replay_stores_the_memory_before_each_step_exactly_across_episodes_and_the_ring_seam():
    config = dataclasses.replace(TINY, replay_capacity=4 * 10)
    trainer = make_trainer(None, backbone="s5", config=config)
    carries = []
    for _ in range(27):  # the ring of 10 rows per env wraps twice; 3-step corridors start many episodes
        carries.append(flatten_carry(trainer.state))
        trainer.env_step(writer=None)
    replay = trainer.replay
    assert replay.storage["memory.backbone.ssm"].dtype == torch.complex64
    for step in range(17, 27):
        for name, value in carries[step].items():
            assert torch.equal(replay.storage[name][:, step % 10], value), (name, step)
    is_first = replay.storage["is_first"]
    assert is_first.any() and (replay.storage["memory.deter"][is_first] != 0).any(), \
        "an episode's first row keeps the memory the agent had before the reset"


@pytest.mark.parametrize("backbone,world_model", [("gru", "parallel"), ("s5", "parallel"), ("gru", "rssm")])
def test_a_window_entered_with_its_stored_memory_equals_running_from_the_episode_start(backbone, world_model,
                                                                                        mode_latents):
    config = dataclasses.replace(TINY, world_model=world_model, replay_capacity=4 * 200)
    trainer = make_trainer(None, backbone=backbone, config=config)
    for _ in range(60):
        trainer.env_step(writer=None)
    world_model = trainer.agent.world_model
    history = {name: value[:, :60] for name, value in trainer.replay.storage.items()}
    assert history["is_first"][:, 0].all() and history["is_first"][:, 1:].any()
    torch.manual_seed(3)
    batch, (envs, rows) = trainer.replay.sample_with_index(8, 8)
    with torch.no_grad():
        from_start = world_model.observe(history["obs"], history["action"], history["is_first"])
        window = world_model.observe(batch["obs"], batch["action"], batch["is_first"],
                                     unflatten_carry({key: value[:, 0] for key, value in batch.items()}))
        zero_start = world_model.observe(batch["obs"], batch["action"], batch["is_first"])
    expected = from_start["features"][envs[:, None], rows]
    torch.testing.assert_close(window["features"], expected, rtol=1e-4, atol=1e-5)
    carried_in = ~batch["is_first"][:, 0]
    assert carried_in.any(), "some windows must start inside an episode"
    assert not torch.allclose(zero_start["features"][carried_in], expected[carried_in], atol=1e-3)


def test_replaying_refreshes_the_stored_memory_and_burn_in_runs_before_the_trained_rows(mode_latents):
    config = dataclasses.replace(TINY, burn_in=3)
    trainer = make_trainer(None, config=config)
    while not trainer.ready_to_train():
        trainer.env_step(writer=None)
    sampled = []
    sample_with_index = trainer.replay.sample_with_index
    trainer.replay.sample_with_index = lambda *args: sampled.append(sample_with_index(*args)) or sampled[-1]
    before = {name: value.clone() for name, value in trainer.replay.storage.items()}
    with torch.no_grad():
        trainer.agent.world_model.backbone.cells[0].weight_hh.mul_(1.5)  # the stored memory is now stale
        _, _, outputs, _, _ = trainer.replayed_world_model_loss()
    batch, (envs, rows) = sampled[0]
    assert rows.shape == (TINY.batch_size, 3 + TINY.batch_length)
    with torch.no_grad():
        whole = trainer.agent.world_model.observe(batch["obs"], batch["action"], batch["is_first"],
                                                  unflatten_carry({key: value[:, 0] for key, value in batch.items()}))
    torch.testing.assert_close(outputs["features"], whole["features"][:, 3:])
    stored = trainer.replay.storage
    torch.testing.assert_close(stored["memory.deter"][envs[:, None], rows[:, 1:]], whole["deter"][:, 1:])
    torch.testing.assert_close(stored["memory.backbone.hidden"][envs[:, None], rows[:, 1:]],
                               whole["states"]["hidden"][:, 1:])
    assert not torch.allclose(stored["memory.deter"][envs[:, None], rows[:, 1:]],
                              before["memory.deter"][envs[:, None], rows[:, 1:]])
    untouched = torch.ones_like(stored["is_first"])
    untouched[envs[:, None], rows[:, 1:]] = False
    assert torch.equal(stored["memory.deter"][untouched], before["memory.deter"][untouched])


@pytest.mark.parametrize("backbone,world_model", [("gru", "parallel"), ("s5", "parallel"), ("gru", "rssm")])
def test_stored_gradients_make_two_windows_train_as_one_window_of_both(backbone, world_model, mode_latents):
    """Training the later window, storing its start gradient, then the earlier window (which
    reads that gradient) gives the world model the gradient of backpropagating through both."""
    length = 4
    config = dataclasses.replace(TINY, world_model=world_model, replay_capacity=4 * 200, batch_size=1,
                                 batch_length=length, stored_gradient=True)
    trainer = make_trainer(None, backbone=backbone, config=config,
                           env=make_env("tmaze", num_envs=4, seed=5, corridor_length=12))
    for _ in range(40):
        trainer.env_step(writer=None)
    replay, world_model = trainer.replay, trainer.agent.world_model
    is_first = replay.storage["is_first"]
    env, first = next((env, row) for env in range(4) for row in range(1, 40 - 2 * length)
                      if not is_first[env, row + 1:row + 2 * length].any())
    forced_windows = []

    def forced_sample(batch_size: int, length: int):
        envs, rows = forced_windows.pop(0)
        return {name: value[envs[:, None], rows] for name, value in replay.storage.items()}, (envs, rows)

    replay.sample_with_index = forced_sample

    def world_model_gradients(start_row: int, rows: int) -> tuple[dict[str, torch.Tensor], tuple | None]:
        forced_windows.append((torch.tensor([env]), torch.arange(start_row, start_row + rows)[None]))
        world_model.zero_grad(set_to_none=True)
        loss, _, _, _, window_start = trainer.replayed_world_model_loss()
        loss.backward()
        gradients = {name: value.grad.clone() for name, value in world_model.named_parameters() if value.grad is not None}
        return gradients, window_start

    later, window_start = world_model_gradients(first + length, length)
    trainer.store_start_gradients(window_start)
    assert any(replay.storage[name][env, first + length].abs().sum() > 0 for name in trainer.gradient_fields)
    earlier, _ = world_model_gradients(first, length)
    assert all(replay.storage[name][env, first + length].abs().sum() == 0 for name in trainer.gradient_fields), \
        "a stored gradient is used once"
    trainer.config = dataclasses.replace(config, batch_length=2 * length)
    both, _ = world_model_gradients(first, 2 * length)
    assert set(earlier) == set(both)
    for name, gradient in both.items():  # the loss of one window of 2T rows is the mean of the two
        torch.testing.assert_close(earlier[name] + later.get(name, torch.zeros_like(gradient)), 2 * gradient,
                                   rtol=1e-4, atol=1e-6, msg=name)


def test_zero_start_windows_ignore_the_replay_memory():
    trainer = make_trainer(None, config=dataclasses.replace(TINY, replay_state=False))
    assert not any(name.startswith("memory.") for name in trainer.replay.storage)
    while not trainer.ready_to_train():
        trainer.env_step(writer=None)
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())


def test_lambda_returns_match_their_definition():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    continues = torch.tensor([[1.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 3.0, 100.0]])
    gamma = 0.9
    # lambda = 1: discounted rewards until the predicted end, no bootstrap past it.
    torch.testing.assert_close(lambda_returns(rewards, continues, values, gamma, 1.0),
                               torch.tensor([[1.0 + 0.9 * 0.0 + 0.81 * 2.0, 0.0 + 0.9 * 2.0, 2.0]]))
    # lambda = 0: one-step targets r_i + gamma c_i v_{i+1}.
    torch.testing.assert_close(lambda_returns(rewards, continues, values, gamma, 0.0),
                               torch.tensor([[1.0 + 0.9 * 1.0, 0.0 + 0.9 * 3.0, 2.0]]))


def test_replay_returns_follow_the_replayed_rewards_and_cut_at_ends_and_truncations():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    terminated = torch.tensor([[False, True, False, False, False]])
    is_first = torch.tensor([[False, False, True, False, True]])  # row 3 is truncated: row 4 starts anew
    bootstrap = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    gamma, lambda_ = 0.5, 0.5
    returns = replay_returns(rewards, terminated, is_first, bootstrap, gamma, lambda_)
    r2 = 3.0 + gamma * (0.5 * 40.0 + 0.5 * 40.0)  # R_3 = b_3 (truncated)
    torch.testing.assert_close(returns, torch.tensor([[1.0 + gamma * (0.5 * 20.0 + 0.5 * 2.0), 2.0, r2, 40.0]]))


def test_the_replay_value_loss_trains_the_critic_on_replayed_rows():
    trainer = make_trainer(None, config=dataclasses.replace(TINY, replay_value_loss=0.3))
    while not trainer.ready_to_train():
        trainer.env_step(writer=None)
    torch.manual_seed(4)
    _, _, start, batch, _ = trainer.replayed_world_model_loss()
    agent = trainer.agent
    torch.manual_seed(5)
    _, with_replay, _ = agent.actor_critic_loss(start, batch)
    torch.manual_seed(5)
    _, without_replay, _ = agent.actor_critic_loss(start)
    assert with_replay.item() > without_replay.item() + 0.3 * 0.5  # two-hot cross-entropies are well above 0.5 here
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())


def test_image_observations_use_the_cnn_encoder_and_transposed_cnn_decoder():
    torch.manual_seed(2)
    config = dataclasses.replace(TINY, decoder_channels=4)
    observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), dtype="uint8")
    agent = DreamerAgent(observation_space, gymnasium.spaces.Discrete(5), "gru", config)
    batch = {
        "obs": torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8),
        "action": F.one_hot(torch.randint(0, 5, (2, 6)), 5).float(),
        "is_first": torch.zeros(2, 6, dtype=torch.bool),
        "reward": torch.randn(2, 6),
        "terminated": torch.zeros(2, 6, dtype=torch.bool),
    }
    loss, terms, outputs = agent.world_model.loss(batch)
    assert agent.world_model.decoder(outputs["features"]).shape == (2, 6, 64, 64, 3)
    # Uniform pixels against a prediction near 0 cost about 64 * 64 * 3 / 3 per image.
    assert 2000 < terms["rec"].item() < 8000
    actor_loss, critic_loss, _ = agent.actor_critic_loss(outputs)
    (loss + actor_loss + critic_loss).backward()
    assert all(torch.isfinite(value) for value in (loss, actor_loss, critic_loss))
    action, state = agent.act(batch["obs"][:, 0], agent.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert action.dtype == torch.int64 and action.shape == (2,) and state["deter"].shape == (2, TINY.hidden_dim)


def test_the_dreamerv3_image_network_and_input_layer_at_tiny_sizes():
    torch.manual_seed(3)
    config = dataclasses.replace(TINY, decoder_channels=4, image_network="dreamerv3", input_layer=True, mlp_units=12)
    observation_space = gymnasium.spaces.Box(0, 255, (64, 64, 3), dtype="uint8")
    agent = DreamerAgent(observation_space, gymnasium.spaces.Discrete(5), "gru", config)
    world_model = agent.world_model
    convs = [layer for layer in world_model.encoder.convs if isinstance(layer, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [4, 8, 16, 32]
    assert all(conv.stride == (2, 2) and conv.kernel_size == (4, 4) for conv in convs)
    norms = [layer for layer in world_model.encoder.convs if isinstance(layer, torch.nn.LayerNorm)]
    assert [norm.normalized_shape for norm in norms] == [(4,), (8,), (16,), (32,)]
    assert world_model.encoder.output_dim == 32 * 4 * 4  # the flattened 4x4 grid of 8c channels
    assert world_model.posterior[0].in_features == 32 * 4 * 4
    assert sum(isinstance(layer, torch.nn.LayerNorm) for layer in world_model.decoder.deconvs) == 3
    assert world_model.backbone.input_dim == 12 and world_model.input_layer[0].in_features == 4 * 4 + 5
    obs = torch.randint(0, 256, (2, 6, 64, 64, 3), dtype=torch.uint8)
    assert world_model.encoder(obs).shape == (2, 6, 512)
    batch = {"obs": obs, "action": F.one_hot(torch.randint(0, 5, (2, 6)), 5).float(),
             "is_first": torch.zeros(2, 6, dtype=torch.bool), "reward": torch.randn(2, 6),
             "terminated": torch.zeros(2, 6, dtype=torch.bool)}
    loss, terms, outputs = world_model.loss(batch)
    assert world_model.decoder(outputs["features"]).shape == (2, 6, 64, 64, 3)
    loss.backward()
    assert world_model.encoder.convs[0].weight.grad.abs().sum() > 0
    assert world_model.input_layer[0].weight.grad.abs().sum() > 0
    action, state = agent.act(obs[:, 0], agent.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert action.shape == (2,) and state["deter"].shape == (2, TINY.hidden_dim)
    with pytest.raises(ValueError, match="unknown image_network 'resnet'; choose one of: nature, dreamerv3"):
        dataclasses.replace(TINY, image_network="resnet").validate()


@pytest.mark.parametrize("backbone", ["gru", "s5"])
def test_actor_and_critic_can_read_the_whole_backbone_state(backbone):
    config = dataclasses.replace(TINY, actor_critic_full_state=True, replay_value_loss=0.3)
    trainer = make_trainer(None, backbone=backbone, config=config)
    world_model, agent = trainer.agent.world_model, trainer.agent
    initial = world_model.backbone.initial_state(1)
    state_size = sum(2 * value.numel() if value.is_complex() else value.numel() for value in initial.values())
    assert agent.actor.net[0].in_features == agent.critic.net[0].in_features == world_model.feature_dim + state_size
    while not trainer.ready_to_train():
        trainer.env_step(writer=None)
    _, _, start, batch, _ = trainer.replayed_world_model_loss()
    rows = start["is_first"].flatten()
    flat_states = {key: value.flatten(0, 1) for key, value in start["states"].items()}
    with torch.no_grad():
        trajectory = world_model.imagine(lambda features: agent.actor(features).sample(),
                                         start["deter"].flatten(0, 1), start["latents"].flatten(0, 1),
                                         flat_states, rows, 3)
    tail = trajectory["features"][..., world_model.feature_dim:]
    torch.testing.assert_close(tail[:, 0], world_model.state_features(flat_states, rows))
    assert (tail[rows, 0] == 0).all() and (tail[~rows, 0] != 0).any()
    if backbone == "gru":  # a one-layer GRU's state is its output h
        torch.testing.assert_close(tail[:, 1:], trajectory["hidden"])
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())


# -- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", EVERY_BACKBONE)
def test_a_few_updates_run_with_finite_losses(backbone):
    trainer = make_trainer(None, backbone=backbone)
    logged = []
    trainer.train(on_update=lambda trainer, metrics: logged.append(metrics))
    assert trainer.global_step == 96 and trainer.update == len(logged) >= 4
    for key in ("losses/world_model/dyn", "losses/world_model/rep", "losses/world_model/rec", "losses/world_model/rew",
                "losses/world_model/con", "losses/actor", "losses/critic", "charts/SPS"):
        assert all(torch.isfinite(torch.tensor(metrics[key])) for metrics in logged), key
    assert logged[-1]["losses/world_model/dyn"] >= TINY.free_nats


def test_rssm_world_model_trains():
    trainer = make_trainer(None, config=dataclasses.replace(TINY, world_model="rssm"))
    metrics = trainer.train()
    assert trainer.update >= 4 and all(torch.isfinite(torch.tensor(value)) for value in metrics.values())


def test_continuous_actions_train_through_the_gymnasium_adapter():
    env = GymnasiumVectorEnv("Pendulum-v1", num_envs=2, seed=0)
    trainer = make_trainer(None, total_steps=48, env=env)
    metrics = trainer.train()
    assert trainer.update >= 2 and all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
    stored = trainer.replay.storage["action"][:, : trainer.replay.size]
    assert stored.shape[-1] == 1 and stored.abs().max() <= 1.0
    action, _ = trainer.agent.act(trainer.next_obs, trainer.state, trainer.next_is_first)
    assert action.shape == (2, 1) and action.abs().max() <= 2.0  # Pendulum's torque bound


def test_random_prefill_then_train_ratio_sets_the_number_of_updates():
    trainer = make_trainer(None, total_steps=96)
    trainer.train()
    # Training starts once 32 steps are stored; then each 4-env step adds 4 * 32 / (4 * 8) = 4 updates.
    steps_with_credit = (96 - 32) // 4 + 1
    assert trainer.update == steps_with_credit * 4


def test_evaluate_runs_the_dreamer_agent():
    trainer = make_trainer(None)
    result = evaluate(trainer.agent, make_env("tmaze", num_envs=6, seed=1, corridor_length=3))
    assert result["episodes"] == 6 and 0.0 <= result["success_rate"] <= 1.0


def test_bad_settings_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="unknown world_model 'lstm'; choose one of: parallel, rssm"):
        make_trainer(None, config=dataclasses.replace(TINY, world_model="lstm"))
    with pytest.raises(ValueError, match="batch_length must be positive, got 0"):
        make_trainer(None, config=dataclasses.replace(TINY, batch_length=0))
    with pytest.raises(ValueError, match=r"replay_capacity .* must hold at least burn_in \+ batch_length"):
        make_trainer(None, config=dataclasses.replace(TINY, replay_capacity=16))
    with pytest.raises(ValueError, match="total_steps must be positive"):
        make_trainer(None, total_steps=0)
    with pytest.raises(ValueError, match="stored_gradient needs replay_state"):
        make_trainer(None, config=dataclasses.replace(TINY, stored_gradient=True, replay_state=False))


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train(checkpoint_extra={"config": {"note": "kept"}})
    payload = load_checkpoint(tmp_path)
    assert payload["config"] == {"note": "kept"}
    assert payload["update"] == trainer.update and payload["global_step"] == 96
    assert payload["replay"] is not None
    restored = make_trainer(None)
    restored.restore(payload)
    for name, value in parameters(trainer).items():
        torch.testing.assert_close(parameters(restored)[name], value, rtol=0, atol=0)
    assert restored.replay.size == trainer.replay.size
    assert torch.equal(restored.replay.storage["obs"], trainer.replay.storage["obs"])
    assert restored.train_credit == trainer.train_credit
    assert not list(tmp_path.glob("*.tmp")), "no temp file may be left behind"


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a")
    uninterrupted.train()

    def stop_at_a_checkpoint(trainer, metrics):
        if trainer.update == 8:
            raise Interrupt

    interrupted = make_trainer(tmp_path / "b")
    with pytest.raises(Interrupt):
        interrupted.train(on_update=stop_at_a_checkpoint)
    resumed = make_trainer(tmp_path / "b")
    torch.manual_seed(12345)  # a different RNG state: the checkpoint must restore the right one
    resumed.restore(load_checkpoint(tmp_path / "b"))
    assert resumed.update == 8
    resumed.train()
    assert (resumed.global_step, resumed.update) == (uninterrupted.global_step, uninterrupted.update)
    expected = parameters(uninterrupted)
    for name, value in parameters(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=f"parameter {name} differs")


def test_a_large_replay_is_left_out_and_refilled_with_the_policy_on_resume(tmp_path):
    config = dataclasses.replace(TINY, replay_checkpoint_mb=0.0)
    trainer = make_trainer(tmp_path, total_steps=64, config=config)
    trainer.train()
    payload = load_checkpoint(tmp_path)
    assert payload["replay"] is None
    resumed = make_trainer(tmp_path, total_steps=128, config=config)
    resumed.restore(payload)
    assert resumed.replay.size == 0 and not resumed.ready_to_train()
    updates_before = resumed.update
    resumed.train()
    # 32 prefill steps (8 env steps of 4 envs) refill the replay, then training goes on.
    assert resumed.update == updates_before + ((128 - 64 - 32) // 4 + 1) * 4


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path)

    def poison_after_first_checkpoint(trainer, metrics):
        if trainer.update == 4:
            with torch.no_grad():
                trainer.agent.world_model.decoder[-1].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="became nan"):  # the decoder's loss, or its weights before acting
        trainer.train(on_update=poison_after_first_checkpoint)
    payload = load_checkpoint(tmp_path)
    assert payload["update"] == 4
    assert all(torch.isfinite(value).all() for value in payload["agent"].values() if value.is_floating_point())


# -- learning ------------------------------------------------------------------------------

LEARNING = DreamerConfig(
    hidden_dim=32, encoder_dim=32, mlp_units=32, mlp_layers=1, num_latents=4, num_classes=4, reward_bins=63,
    batch_size=8, batch_length=16, train_ratio=64, prefill=1000, imagination_horizon=10, replay_capacity=100_000,
    world_model_lr=3e-3, actor_lr=1e-3, critic_lr=1e-3, actor_entropy=3e-3, checkpoint_every=10**9,
)


def train_on_memory_retention(backbone: str, seed: int = 0) -> tuple[DreamerTrainer, list[float], dict, float]:
    """Dreamer on the tmaze with a 4-step corridor (the cue must be held for 5 steps)."""
    torch.set_num_threads(1)
    seed_everything(seed)
    env = make_env("tmaze", num_envs=8, seed=seed, corridor_length=4)
    trainer = DreamerTrainer(LEARNING, env, 4500, torch.device("cpu"), backbone, progress=False)
    world_model_losses: list[float] = []
    started = time.perf_counter()
    trainer.train(on_update=lambda trainer, metrics: world_model_losses.append(metrics["losses/world_model/total"]))
    seconds = time.perf_counter() - started
    result = evaluate(trainer.agent, make_env("tmaze", num_envs=200, seed=seed + 100, corridor_length=4))
    return trainer, world_model_losses, result, seconds


def test_dreamer_with_memory_beats_the_memoryless_ceiling_on_memory_retention():
    trainer, losses, result, seconds = train_on_memory_retention("gru")
    print(f"dreamer+gru on tmaze (corridor 4): {trainer.update} updates, {seconds:.0f} s, "
          f"world-model loss {sum(losses[:20]) / 20:.2f} -> {sum(losses[-20:]) / 20:.2f}, eval {result}")
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    assert result["success_rate"] >= 0.9 > trainer.env.chance_success + 0.3


@pytest.mark.slow
def test_memoryless_dreamer_stays_at_chance_on_memory_retention():
    trainer, losses, result, seconds = train_on_memory_retention("none")
    print(f"dreamer+none on tmaze (corridor 4): {seconds:.0f} s, eval {result}")
    assert result["success_rate"] <= trainer.env.chance_success + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["gru", "s5"])
@pytest.mark.parametrize("stored_gradient", [True, False])
def test_stored_gradients_learn_a_cue_older_than_every_replayed_window(backbone, stored_gradient):
    """T-maze with a 4-step corridor (cue held 5 steps) and 4-step windows: the cue and the turn
    that needs it never share a window. Stored gradients solve it; stored memory alone stays at chance."""
    from scripts.dreamer_memory_span import SMALL_DREAMER, train_on_tmaze
    config = dataclasses.replace(SMALL_DREAMER, batch_length=4, stored_gradient=stored_gradient)
    result = train_on_tmaze(backbone, corridor_length=4, config=config, total_steps=8000)
    print(f"dreamer+{backbone}, 4-step windows, stored_gradient={stored_gradient}: {result}")
    if stored_gradient:
        assert result["success_rate"] >= 0.9
    else:
        assert result["success_rate"] <= 0.6


def test_each_log_interval_writes_the_smoothed_return_that_mmer_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(tmp_path)
    trainer.train()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    smoothed = events.Scalars("charts/episodic_return_smoothed")
    losses = events.Scalars("losses/actor")  # written at the same log intervals (log_every=1: every update)
    assert 0 < len(smoothed) <= len(losses) == trainer.update
    assert {event.step for event in smoothed} <= {event.step for event in losses}
    # A few episodes end per interval, fewer than 100: the last point is the mean of the latest 100 returns.
    assert smoothed[-1].value == pytest.approx(trainer.statistics.mean_return())

"""train-agent: bad input gets one sentence and exit code 2; a run leaves its files behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.train import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.train", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "lsmt"], "unknown backbone 'lsmt'; choose one of: ffm, gated_deltanet, gru, gtrxl, lru, lstm, mamba"),
        (["--env", "nowhere"], "unknown env 'nowhere'; choose a memrl env"),
        (["--preset", "huge"], "unknown preset 'huge'; choose one of: auto, default"),
        (["--total-steps", "-5"], "--total-steps must be positive, got -5"),
        (["--num-envs", "0"], "--num-envs must be positive, got 0"),
        (["--num-envs", "6", "--num-minibatches", "4"], "must be divisible by --num-minibatches"),
        (["--resume"], "--resume needs --run-dir"),
        (["--backbone-options", '{"no_such_option": 1}'], "cannot build the agent"),
    ],
    ids=["backbone", "env", "preset", "negative-budget", "zero-envs", "minibatches", "resume", "options"],
)
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, args, message):
    extra = [] if "--resume" in args else ["--run-dir", str(tmp_path / "run"), "--quiet"]
    result = run_cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path):
    result = run_cli("--resume", "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert "no checkpoint to resume from" in result.stderr and "Traceback" not in result.stderr


def test_help_shows_every_config_field():
    result = run_cli("--help")
    assert result.returncode == 0
    for text in ("--backbone", "memory backbone", "--gae-lambda", "GAE lambda", "--total-steps", "--resume"):
        assert text in result.stdout
    assert "(default 's5')" in result.stdout and "default: None" not in result.stdout, result.stdout


def test_a_smoke_run_leaves_config_logs_checkpoint_and_eval(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--env", "memory-retention", "--backbone", "gru", "--preset", "smoke",
                 "--run-dir", str(run_dir), "--quiet"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["backbone"] == "gru" and config["preset"] == "smoke"
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 8 and 0.0 <= evaluation["success_rate"] <= 1.0
    assert (run_dir / "checkpoint.pt").exists()
    assert not list(run_dir.glob("*.tmp"))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"charts/SPS", "charts/episodic_return", "charts/episodic_return_smoothed", "charts/success_rate", "losses/value_loss",
            "losses/approx_kl", "losses/explained_variance"} <= scalars

    resumed = run_cli("--resume", "--run-dir", str(run_dir), "--total-steps", "4096", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "eval.json").read_text())["global_step"] == 4096


@pytest.mark.parametrize("backbone, world_model", [("gru", "rssm"), ("s5", "parallel")])
def test_the_dreamer_atari100k_preset_is_dreamerv3s_setting(backbone, world_model):
    from agents.train import build_parser, resolve_config

    args = build_parser().parse_args(["--agent", "dreamer", "--env", "atari100k-pong", "--backbone", backbone])
    run, config, preset = resolve_config(args)
    assert preset == ("dreamer:atari100k+dreamer:atari100k/gru" if backbone == "gru" else "dreamer:atari100k")
    assert (config.train_ratio, config.hidden_dim, config.mlp_units, config.mlp_layers) == (1024, 512, 512, 2)
    assert (config.image_network, config.decoder_channels, config.input_layer) == ("dreamerv3", 32, True)
    assert (config.num_latents, config.num_classes, config.batch_size, config.batch_length) == (32, 32, 16, 64)
    assert config.world_model == world_model and config.replay_state and config.replay_value_loss == 0.3
    assert run.env_options == {"life_loss": False} and run.eval_deterministic is False


def test_the_hard_endless_tmaze_gets_its_measured_preset():
    # benchmarks/hard_tasks.md: this setting reaches >= 0.95 greedy success on uniform L=10, n=10, where the
    # defaults stop near 0.9; `--preset auto` must pick it for the env, and the settings must stay the measured ones.
    from agents.train import build_parser, resolve_config

    args = build_parser().parse_args(["--env", "endless-tmaze-uniform-l10-n10", "--backbone", "s5"])
    run, config, preset = resolve_config(args)
    assert preset == "endless-tmaze-uniform-l10-n10"
    assert (run.total_steps, run.num_envs, config.num_steps, config.hidden_dim) == (5_000_000, 64, 64, 64)
    assert (config.learning_rate, config.num_minibatches, config.ent_coef, config.gamma) == (1e-3, 2, 0.01, 0.99)


@pytest.mark.parametrize("env", ["color-cubes-trivial", "color-cubes"])
def test_color_cubes_trivial_gets_its_measured_preset(env):
    # benchmarks/hard_tasks.md: the wide ReLU encoder and timeouts that end the return are what let PPO learn
    # Color-Cubes Trivial; `--preset auto` must pick them for the env, and the settings must stay the measured ones.
    from agents.train import build_parser, resolve_config

    run, config, preset = resolve_config(build_parser().parse_args(["--env", env, "--backbone", "s5"]))
    assert preset == env
    assert (run.total_steps, run.num_envs, config.num_steps, config.hidden_dim) == (3_000_000, 64, 64, 64)
    assert (config.learning_rate, config.num_minibatches, config.ent_coef) == (1e-3, 2, 0.01)
    assert config.encoder_width == 256 and config.bootstrap_truncated is False


def test_the_wide_color_cubes_dagger_preset_is_the_measured_student():
    # benchmarks/hard_tasks.md: with these settings a gru student uses Medium's map updates (0.75-0.79, above the
    # first-map ceiling); the run was made with the narrow preset plus these flags, so the two must stay equal.
    from agents.train import build_parser, resolve_config

    wide = build_parser().parse_args(["--agent", "dagger", "--preset", "color-cubes-wide",
                                      "--env", "color-cubes-medium", "--backbone", "gru"])
    flags = build_parser().parse_args(["--agent", "dagger", "--preset", "color-cubes", "--env", "color-cubes-medium",
                                       "--backbone", "gru", "--hidden-dim", "128", "--head-width", "512",
                                       "--total-steps", "2457600"])
    (wide_run, wide_config, preset), (flags_run, flags_config, _) = resolve_config(wide), resolve_config(flags)
    assert preset == "dagger:color-cubes-wide"
    assert (wide_run.total_steps, wide_config.hidden_dim, wide_config.head_width) == (2_457_600, 128, 512)
    assert wide_config == flags_config and wide_run.total_steps == flags_run.total_steps


def test_the_passive_t_maze_dagger_preset_sums_the_loss_and_keeps_the_measured_setting():
    # benchmarks/studies/tmaze-passive-l500/README.md: with these settings an s5 student learns the L = 100 turn,
    # which it never does with the loss averaged over the steps; `--preset auto` must pick them for the env.
    from agents.train import build_parser, resolve_config

    run, config, preset = resolve_config(build_parser().parse_args(
        ["--agent", "dagger", "--env", "memory-retention", "--backbone", "s5"]))
    assert preset == "dagger:memory-retention"
    assert (run.total_steps, run.num_envs, config.num_steps, config.hidden_dim) == (1_200_000, 32, 101, 64)
    assert (config.learning_rate, config.num_minibatches, config.update_epochs) == (1e-3, 2, 4)
    assert config.sum_loss_over_time is True and config.max_grad_norm == 0.5 and config.head_width == 0

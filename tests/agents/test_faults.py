"""Faults survived, nothing lost: SIGKILL (also mid-checkpoint), a full disk, NaN weights, a dying study worker."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.ppo import PPOConfig, PPOTrainer
from agents.run import CHECKPOINT_NAME, CheckpointWriteFailed, TrainingDiverged, load_checkpoint, seed_everything
from envs.registry import make_env
from memory import BACKBONES

REPOSITORY = Path(__file__).resolve().parents[2]
SMALL = PPOConfig(num_steps=16, hidden_dim=16, num_minibatches=2, update_epochs=2, checkpoint_every=1)


def make_trainer(run_dir: Path | None, backbone: str = "gru", updates: int = 4) -> PPOTrainer:
    seed_everything(3)
    env = make_env("memory-retention", num_envs=8, seed=3)
    return PPOTrainer(SMALL, env, 8 * 16 * updates, torch.device("cpu"), backbone, run_dir=run_dir, progress=False)


# -- NaN in the weights ------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_nan_in_the_backbone_stops_ppo_with_the_last_good_checkpoint(tmp_path, backbone):
    trainer = make_trainer(tmp_path, backbone)
    assert any(True for _ in trainer.agent.backbone.parameters()), "the backbone must have weights to poison"

    def poison_the_backbone(trainer, metrics):
        if trainer.update == 2:
            with torch.no_grad():
                for parameter in trainer.agent.backbone.parameters():
                    parameter.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"parameter backbone\..* became nan or inf before update 3") as error:
        trainer.train(on_update=poison_the_backbone)
    assert "\n" not in str(error.value)
    payload = load_checkpoint(tmp_path)
    assert payload["update"] == 2
    assert all(bool(value.isfinite().all()) for value in payload["agent"].values() if value.is_floating_point())
    resumed = make_trainer(None, backbone)
    resumed.restore(payload)
    resumed.train()
    assert resumed.update == 4


def test_nan_in_a_dreamer_backbone_stops_before_acting_with_the_last_good_checkpoint(tmp_path):
    from tests.agents.test_dreamer import make_trainer as make_dreamer

    trainer = make_dreamer(tmp_path)

    def poison_the_backbone(trainer, metrics):
        if trainer.update == 4:
            with torch.no_grad():
                for parameter in trainer.agent.world_model.backbone.parameters():
                    parameter.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"parameter world_model\.backbone\..* became nan or inf"):
        trainer.train(on_update=poison_the_backbone)
    payload = load_checkpoint(tmp_path)
    assert payload["update"] == 4
    assert all(bool(value.isfinite().all()) for value in payload["agent"].values() if value.is_floating_point())


# -- a memory that overflows with finite weights --------------------------------------------


def test_an_overflowing_memory_stops_ppo_in_one_sentence_with_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, "shm")

    def fill_the_memory_to_float32s_edge(trainer, metrics):
        if trainer.update == 2:  # 3e38 of float32's 3.4e38: the next calibration factor above 1 overflows it
            trainer.state["memory"].fill_(3e38)

    with pytest.raises(TrainingDiverged, match=r"the shm memory's output became nan or inf: its state holds \d+ "
                                               r"nan/inf entries .*\(the memory overflowed\); training stopped") as error:
        trainer.train(on_update=fill_the_memory_to_float32s_edge)
    assert "\n" not in str(error.value)
    assert all(bool(parameter.isfinite().all()) for parameter in trainer.agent.parameters())
    assert load_checkpoint(tmp_path)["update"] == 2


def test_a_non_finite_observation_is_named_as_the_cause():
    trainer = make_trainer(None, "gru")
    obs = torch.full_like(trainer.next_obs, float("nan"))
    with pytest.raises(TrainingDiverged, match="^the encoded observation became nan or inf; training stopped"):
        trainer.agent.step(obs, trainer.state, trainer.next_is_first)


# -- a disk that fills up mid-write ----------------------------------------------------------


def is_checkpoint_temp(descriptor: int) -> bool:
    return f".{CHECKPOINT_NAME}." in os.readlink(f"/proc/self/fd/{descriptor}")


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell the checkpoint's temp file apart")
@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, failing):
    trainer = make_trainer(tmp_path)
    good = {}
    real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace

    class HalfWritten:
        """A checkpoint temp file whose disk fills up halfway through the write."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data: bytes):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise no_space()

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def fdopen(descriptor, *args, **kwargs):
        handle = real_fdopen(descriptor, *args, **kwargs)
        return HalfWritten(handle) if is_checkpoint_temp(descriptor) else handle

    def fsync(descriptor):
        if is_checkpoint_temp(descriptor):
            raise no_space()
        real_fsync(descriptor)

    def replace(source, target):
        if Path(target).name == CHECKPOINT_NAME:
            raise no_space()
        real_replace(source, target)

    def fill_the_disk_after_the_first_checkpoint(trainer, metrics):
        if trainer.update == 1:
            good["bytes"] = (tmp_path / CHECKPOINT_NAME).read_bytes()
            fakes = {"write": ("fdopen", fdopen), "fsync": ("fsync", fsync), "replace": ("replace", replace)}
            monkeypatch.setattr(os, *fakes[failing])

    with pytest.raises(CheckpointWriteFailed, match="No space left on device.*previous checkpoint was left as it was"):
        trainer.train(on_update=fill_the_disk_after_the_first_checkpoint)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good["bytes"]
    assert load_checkpoint(tmp_path)["update"] == 1
    assert sorted(path.name for path in tmp_path.iterdir() if "checkpoint" in path.name) == [CHECKPOINT_NAME]


# -- SIGKILL, also in the middle of a checkpoint write ---------------------------------------

RUNNER = """
import os, sys, time
from pathlib import Path

real_replace, writes = os.replace, 0
pause_at = int(os.environ.get("MEMRL_TEST_PAUSE_AT_CHECKPOINT", "0"))


def replace(source, target):
    # Stop between writing the checkpoint's temp file and renaming it: the moment a kill hurts most.
    global writes
    if Path(target).name == "checkpoint.pt":
        writes += 1
        if writes == pause_at:
            Path(os.environ["MEMRL_TEST_PAUSED"]).write_text(str(source))
            time.sleep(600)
    real_replace(source, target)


os.replace = replace
from agents.train import main

sys.exit(main(sys.argv[1:]))
"""
TRAIN_FLAGS = ["--env", "memory-retention", "--backbone", "gru", "--preset", "smoke", "--total-steps", "1024",
               "--checkpoint-every", "1", "--eval-episodes", "8", "--torch-threads", "1", "--quiet"]
"""Four updates of 8 envs x 32 steps, a checkpoint after each."""


def start(run_dir: Path, resume: bool = False, pause_at: int = 0, flags: list[str] = TRAIN_FLAGS) -> subprocess.Popen:
    """train-agent in a subprocess on `run_dir`; with `pause_at` k it stops (for a kill) while writing checkpoint k."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY),
                   "MEMRL_TEST_PAUSE_AT_CHECKPOINT": str(pause_at), "MEMRL_TEST_PAUSED": str(run_dir) + ".paused"}
    arguments = ["--run-dir", str(run_dir), *(["--resume"] if resume else flags)]
    return subprocess.Popen([sys.executable, "-c", RUNNER, *arguments], cwd=REPOSITORY, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_paused(process: subprocess.Popen, run_dir: Path) -> Path:
    """The temp file of the checkpoint the process stopped writing."""
    paused = Path(str(run_dir) + ".paused")
    deadline = time.monotonic() + 240
    while not paused.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.exists(), "the run ended before it paused in a checkpoint write"
    return Path(paused.read_text())


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr


def final_state(run_dir: Path) -> tuple[dict, dict]:
    """(agent weights of the last checkpoint, eval.json without its timings)."""
    evaluation = json.loads((run_dir / "eval.json").read_text())
    timings = ("wall_time_seconds", "train_wall_time_seconds", "peak_memory_mb")
    return load_checkpoint(run_dir)["agent"], {key: value for key, value in evaluation.items() if key not in timings}


def assert_same_result(run_dir: Path, reference: Path) -> None:
    weights, evaluation = final_state(run_dir)
    expected_weights, expected_evaluation = final_state(reference)
    assert evaluation == expected_evaluation
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=f"weight {name} differs")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start(run_dir))
    return run_dir


def test_a_run_killed_during_a_checkpoint_write_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start(run_dir, pause_at=2)
    temp_file = wait_until_paused(process, run_dir)
    assert temp_file.exists() and temp_file.stat().st_size > 0, "killed with the new checkpoint written, not renamed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(run_dir)["update"] == 1  # the first checkpoint, whole
    finish(start(run_dir, resume=True))
    assert_same_result(run_dir, uninterrupted)
    assert not temp_file.exists(), "the killed writer's temp file is cleared by the next checkpoint"


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path, uninterrupted):
    moments = random.Random(0)
    for attempt in range(4):
        run_dir = tmp_path / f"run{attempt}"
        process = start(run_dir)
        time.sleep(moments.uniform(2.0, 8.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumable = (run_dir / CHECKPOINT_NAME).exists()
        if resumable and (run_dir / "eval.json").exists():
            (run_dir / "eval.json").unlink()  # killed after the end: resuming must reproduce the same eval
        finish(start(run_dir, resume=resumable))
        assert_same_result(run_dir, uninterrupted)


# -- a study whose worker dies -----------------------------------------------------------------


@pytest.mark.slow
def test_a_study_whose_worker_dies_resumes_to_the_full_table(tmp_path, monkeypatch):
    from scripts import compare_backbones

    real_execute = compare_backbones.execute
    killed = []

    def execute_killing_seed_one(arguments, log_path, torch_threads):
        run_dir = Path(arguments[arguments.index("--run-dir") + 1])
        if run_dir.name != "seed1" or killed:
            return real_execute(arguments, log_path, torch_threads)
        flags = [flag for index, flag in enumerate(arguments)
                 if flag != "--run-dir" and (index == 0 or arguments[index - 1] != "--run-dir")]
        process = start(run_dir, pause_at=2, flags=flags)
        wait_until_paused(process, run_dir)
        process.send_signal(signal.SIGKILL)
        killed.append(process.wait())
        return process.returncode, 0.0

    study = ["--agents", "ppo", "--backbones", "gru", "--envs", "memory-retention", "--seeds", "2",
             "--study-dir", str(tmp_path / "study"), "--output-dir", str(tmp_path / "out"), "--workers", "1",
             "--total-steps", "1024", "--eval-episodes", "8", "--preset", "smoke", "--train-arg", "checkpoint_every=1"]
    monkeypatch.setattr(compare_backbones, "execute", execute_killing_seed_one)
    assert compare_backbones.main(study) == 1  # seed 1's worker died
    assert killed == [-signal.SIGKILL]
    monkeypatch.undo()
    seed_one = tmp_path / "study" / "memory-retention" / "ppo__gru" / "seed1"
    assert compare_backbones.run_status(seed_one) == "resume"
    assert compare_backbones.main(study) == 0
    assert "--resume" in (seed_one / "train.log").read_text()
    rows = (tmp_path / "out" / "runs.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and all("ppo" in row for row in rows[1:])

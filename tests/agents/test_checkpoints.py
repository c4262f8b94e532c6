"""Safe checkpoints: loading never runs code from the file; broken, old or foreign files are one sentence."""

from __future__ import annotations

import contextlib
import io
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.run import (
    CHECKPOINT_NAME,
    LEGACY_CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from agents.train import main as train_main


def write_marker(path: str) -> None:
    """What a malicious checkpoint makes the loader call: proof that code from the file ran."""
    Path(path).write_text("code from the checkpoint ran")


class Payload:
    """Pickles to a call of `write_marker(marker)`: a stand-in for `os.system(...)`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (str(self.marker),)


def run_cli(main, argv: list[str]) -> tuple[int, str]:
    """Call a CLI's main in-process; (exit code, stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, stderr.getvalue()


def test_a_live_payload_is_live(tmp_path):
    """The payload the next tests use does run code under an ordinary unpickler."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle", "legacy-pkl"])
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, container):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    payload = {"format": "memrl-checkpoint", "version": 1, "config": {}, "agent": Payload(marker)}
    if container == "torch-zip":
        torch.save(payload, run_dir / CHECKPOINT_NAME)
        expected = "was refused"
    elif container == "raw-pickle":
        (run_dir / CHECKPOINT_NAME).write_bytes(pickle.dumps(payload))
        expected = "not a complete torch archive"
    else:
        (run_dir / LEGACY_CHECKPOINT_NAME).write_bytes(pickle.dumps(payload))
        expected = "old pickle format"
    with pytest.raises(CheckpointError, match=expected) as error:
        load_checkpoint(run_dir)
    assert "\n" not in str(error.value)
    code, stderr = run_cli(train_main, ["--resume", "--run-dir", str(run_dir), "--quiet"])
    assert code == 2
    assert stderr.count("\n") == 1 and expected in stderr and "Traceback" not in stderr
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_the_refusal_names_the_blocked_call(tmp_path):
    torch.save({"x": Payload(tmp_path / "marker")}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=r"holds a reference to .*write_marker"):
        load_checkpoint(tmp_path)


def test_round_trip_keeps_tensors_containers_and_tags_the_format(tmp_path):
    payload = {"weights": {"w": torch.randn(3, 2)}, "steps": 7, "lr": 1e-3, "names": ["a", "b"],
               "pair": (1, None), "flag": True}
    save_checkpoint(tmp_path, payload)
    loaded = load_checkpoint(tmp_path)
    assert loaded.pop("format") == "memrl-checkpoint" and loaded.pop("version") == 1
    torch.testing.assert_close(loaded.pop("weights")["w"], payload["weights"]["w"], rtol=0, atol=0)
    assert loaded == {key: value for key, value in payload.items() if key != "weights"}
    assert zipfile.is_zipfile(tmp_path / CHECKPOINT_NAME)


def test_saving_anything_but_plain_data_fails_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]\['env'\] is a Payload"):
        save_checkpoint(tmp_path, {"extra": {"env": Payload(tmp_path / "marker")}})
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_rng_states_survive_the_safe_format_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave a cached gaussian in both
    save_checkpoint(tmp_path, {"rng": rng_state()})
    def draws():
        return random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()

    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path)["rng"])
    assert draws() == expected


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "truncated or is not a memrl checkpoint"),
    ("garbage", "truncated or is not a memrl checkpoint"),
    ("empty", "truncated or is not a memrl checkpoint"),
    ("untagged", "no 'memrl-checkpoint' format tag"),
    ("other-version", "format version 99"),
    ("not-a-dict", "no 'memrl-checkpoint' format tag"),
])
def test_broken_checkpoints_are_one_sentence(tmp_path, damage, expected):
    save_checkpoint(tmp_path, {"weights": torch.randn(256, 64)})
    path = tmp_path / CHECKPOINT_NAME
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "untagged":
        torch.save({"weights": torch.zeros(2)}, path)
    elif damage == "other-version":
        torch.save({"format": "memrl-checkpoint", "version": 99}, path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def gru_smoke_run(tmp_path_factory) -> Path:
    """A finished smoke run of PPO + GRU on memory-rewrite, whose weights the next tests start from."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert train_main(["--env", "memory-rewrite", "--backbone", "gru", "--preset", "smoke", "--device", "cpu",
                       "--eval-episodes", "0", "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_init_from_starts_a_new_run_from_the_source_weights(gru_smoke_run, monkeypatch):
    """--init-from loads the weights only: the new run's agent holds the source's tensors when training
    starts, while its counters start at zero and its config names the source."""
    from agents import train as train_module
    from agents.ppo import PPOTrainer

    source = load_checkpoint(gru_smoke_run)["agent"]
    seen = {}
    original_train = PPOTrainer.train

    def record_then_stop(trainer, checkpoint_extra=None):
        seen["weights"] = {name: value.clone() for name, value in trainer.agent.state_dict().items()}
        seen["global_step"], seen["config"] = trainer.global_step, checkpoint_extra["config"]["run"]
        return original_train(trainer, checkpoint_extra)

    monkeypatch.setattr(PPOTrainer, "train", record_then_stop)
    result = train_module.train(env="memory-rewrite", backbone="gru", preset="smoke", device="cpu", eval_episodes=0,
                                run_dir=str(gru_smoke_run.parent / "fine-tuned"), quiet=True,
                                init_from=str(gru_smoke_run))
    assert seen["weights"].keys() == source.keys()
    for name, value in source.items():
        assert torch.equal(seen["weights"][name], value), name
    assert seen["global_step"] == 0 and seen["config"]["init_from"] == str(gru_smoke_run)
    assert result.global_step == 2_048


@pytest.mark.parametrize("argv, expected", [
    (["--backbone", "s5", "--env", "memory-rewrite"], "holds a ppo + gru agent; this run trains ppo + s5"),
    (["--backbone", "gru", "--env", "tmaze"], "(trained on memory-rewrite) do not fit this run's agent on tmaze"),
    (["--backbone", "gru", "--env", "memory-rewrite", "--hidden-dim", "32"], "do not fit this run's agent"),
    (["--agent", "dreamer", "--backbone", "gru", "--env", "memory-rewrite"],
     "holds a ppo + gru agent; this run trains dreamer + gru, and only the same network (ppo and dagger share one)"),
], ids=["other-backbone", "other-observation-size", "other-width", "other-network"])
def test_init_from_a_run_that_does_not_fit_is_one_sentence_and_writes_nothing(gru_smoke_run, tmp_path, argv, expected):
    run_dir = tmp_path / "run"
    code, stderr = run_cli(train_main, [*argv, "--preset", "smoke", "--device", "cpu", "--run-dir", str(run_dir),
                                        "--init-from", str(gru_smoke_run), "--quiet"])
    assert code == 2 and expected in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not run_dir.exists()


def test_init_from_a_dir_without_a_checkpoint_is_one_sentence(tmp_path):
    code, stderr = run_cli(train_main, ["--preset", "smoke", "--device", "cpu", "--run-dir", str(tmp_path / "run"),
                                        "--init-from", str(tmp_path / "nowhere"), "--quiet"])
    assert code == 2 and "no checkpoint to load" in stderr and len(stderr.strip().splitlines()) == 1, stderr

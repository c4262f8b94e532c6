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

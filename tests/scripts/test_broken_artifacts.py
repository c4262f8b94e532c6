"""Every broken or foreign artifact, and every misuse of a run dir, is one sentence and exit code 2.

One table of cases across train-agent, compare-backbones, atari100k and the memory probes; each
CLI's main() is called in-process (stderr captured, SystemExit caught), and two cases go through a
real subprocess. Each case damages a copy of one tiny real run dir trained once per module.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.run import CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from agents.train import main as train_main
from scripts.atari100k import main as atari_main
from scripts.compare_backbones import main as compare_main
from scripts.memory_probes import main as probes_main

CLIS = {"train-agent": train_main, "compare-backbones": compare_main, "atari100k": atari_main,
        "memory_probes": probes_main}


class Payload:
    """Pickles to a call that creates the file `marker`: code a loader must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real PPO + GRU run dir on memory-retention: config.json, checkpoint.pt, eval.json (one update)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with contextlib.redirect_stderr(io.StringIO()):
        assert train_main(["--env", "memory-retention", "--backbone", "gru", "--preset", "smoke", "--total-steps",
                           "256", "--eval-episodes", "2", "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


# -- damage to a run dir ---------------------------------------------------------------------


def truncate(run_dir: Path) -> None:
    path = run_dir / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:1000])


def garbage(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_NAME).write_bytes(os.urandom(3000))


def empty(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_NAME).write_bytes(b"")


def malicious(run_dir: Path) -> None:
    torch.save({"format": "memrl-checkpoint", "version": 1, "agent": Payload(run_dir / "marker")},
               run_dir / CHECKPOINT_NAME)


def legacy_only(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_NAME).unlink()
    (run_dir / LEGACY_CHECKPOINT_NAME).write_bytes(pickle.dumps(Payload(run_dir / "marker")))


def no_checkpoint(run_dir: Path) -> None:
    (run_dir / CHECKPOINT_NAME).unlink()


def other_version(run_dir: Path) -> None:
    payload = load_checkpoint(run_dir)
    torch.save({**payload, "version": 99}, run_dir / CHECKPOINT_NAME)


def untagged(run_dir: Path) -> None:
    torch.save({"agent": {"w": torch.zeros(2)}}, run_dir / CHECKPOINT_NAME)


def edit_checkpoint(change) -> callable:
    """A damage that loads the checkpoint, applies `change(payload)` and saves it again."""
    def damage(run_dir: Path) -> None:
        payload = load_checkpoint(run_dir)
        for key in ("format", "version"):
            payload.pop(key)
        change(payload)
        save_checkpoint(run_dir, payload)
    return damage


no_config = edit_checkpoint(lambda payload: payload.pop("config"))
unknown_agent = edit_checkpoint(lambda payload: payload["config"]["run"].update(agent="sac"))
unknown_setting = edit_checkpoint(lambda payload: payload["config"]["ppo"].update(warp_drive=1))
wider_network = edit_checkpoint(lambda payload: payload["config"]["ppo"].update(hidden_dim=32))
missing_weights = edit_checkpoint(lambda payload: payload["agent"].pop(next(iter(payload["agent"]))))


def edit_json(name: str, change) -> callable:
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


def write_text(name: str, text: str) -> callable:
    return lambda run_dir: (run_dir / name).write_text(text)


def keep(run_dir: Path) -> None:
    """No damage: the case misuses the command line instead."""


# -- how each CLI is pointed at the damaged run dir ---------------------------------------------


def resume(*flags: str):
    return lambda run_dir, tmp: ["--resume", "--run-dir", str(run_dir), "--quiet", *flags]


def probe(*flags: str):
    return lambda run_dir, tmp: [str(run_dir), "--out-dir", str(tmp / "probes"), "--episodes", "8", *flags]


def one_run_study(folder: str, env_dir: str, selection: list[str]):
    """Argument builder for a study CLI over a one-run study (ppo + gru, seed 1) whose only run dir
    is the damaged copy, moved to `<study>/<env_dir>/ppo__gru/seed1`."""
    def with_flags(*flags: str):
        def argv(run_dir: Path, tmp: Path) -> list[str]:
            study_dir = tmp / folder
            target = study_dir / env_dir / "ppo__gru" / "seed1"
            target.parent.mkdir(parents=True)
            shutil.move(run_dir, target)
            return [*selection, "--agents", "ppo", "--backbones", "gru", "--seeds", "1", "--study-dir", str(study_dir),
                    "--output-dir", str(tmp / "out"), "--aggregate-only", *flags]
        return argv
    return with_flags


study = one_run_study("study", "memory-retention", ["--envs", "memory-retention"])
"""compare-backbones over a one-run study."""
suite = one_run_study("suite", "atari100k-pong", ["--games", "pong"])
"""atari100k over a one-run suite (pong)."""


def nowhere(cli_flag_builder):
    """Point the CLI at a run dir that does not exist."""
    return lambda run_dir, tmp: cli_flag_builder(tmp / "missing", tmp)


def at_a_file(cli_flag_builder):
    """Point the CLI at a plain file instead of a run dir."""
    def argv(run_dir: Path, tmp: Path) -> list[str]:
        (tmp / "a-file").write_text("not a run dir")
        return cli_flag_builder(tmp / "a-file", tmp)
    return argv


CASES = [
    # train-agent --resume
    ("train-agent", keep, lambda run_dir, tmp: ["--resume", "--quiet"], "--resume needs --run-dir"),
    ("train-agent", keep, nowhere(resume()), "does not exist or is not a directory"),
    ("train-agent", keep, at_a_file(resume()), "does not exist or is not a directory"),
    ("train-agent", no_checkpoint, resume(), "no checkpoint to resume from"),
    ("train-agent", legacy_only, resume(), "old pickle format"),
    ("train-agent", truncate, resume(), "truncated or is not a memrl checkpoint"),
    ("train-agent", garbage, resume(), "truncated or is not a memrl checkpoint"),
    ("train-agent", empty, resume(), "truncated or is not a memrl checkpoint"),
    ("train-agent", malicious, resume(), "was refused: it holds a reference to"),
    ("train-agent", other_version, resume(), "format version 99; this memrl reads version 1"),
    ("train-agent", untagged, resume(), "no 'memrl-checkpoint' format tag"),
    ("train-agent", no_config, resume(), "holds no train-agent config"),
    ("train-agent", unknown_agent, resume(), "is of agent 'sac', which this memrl does not have"),
    ("train-agent", unknown_setting, resume(), "holds no train-agent config"),
    ("train-agent", wider_network, resume(),
     "does not fit the ppo + gru agent its config describes (Error(s) in loading state_dict for "
     "RecurrentActorCritic: size mismatch"),
    ("train-agent", missing_weights, resume(), "does not fit the ppo + gru agent"),
    ("train-agent", keep, resume("--agent", "dreamer"),
     "is of a ppo + gru run on memory-retention, not --agent dreamer"),
    ("train-agent", keep, resume("--backbone", "s5"), "not --backbone s5"),
    ("train-agent", keep, resume("--env", "memory-rewrite"), "not --env memory-rewrite"),
    ("train-agent", keep, resume("--total-steps", "-1"), "--total-steps must be positive"),
    # memory probes
    ("memory_probes", keep, nowhere(probe()), "does not exist"),
    ("memory_probes", write_text("config.json", "{"), probe(), "config.json is not valid JSON"),
    ("memory_probes", write_text("config.json", "[1, 2]"), probe(), "has no 'run.env' entry"),
    ("memory_probes", edit_json("config.json", lambda config: {**config, "run": {**config["run"], "env": 5}}),
     probe(), "'run.env' is 5 (expected str)"),
    ("memory_probes",
     edit_json("config.json", lambda config: {**config, "run": {**config["run"], "env": "color-cubes"}}),
     probe(), "memory probes need a T-maze, Endless T-Maze or POPGym"),
    ("memory_probes", lambda run_dir: (run_dir / "config.json").unlink(), probe(), "it has no config.json"),
    ("memory_probes", legacy_only, probe(), "old pickle format"),
    ("memory_probes", truncate, probe(), "truncated or is not a memrl checkpoint"),
    ("memory_probes", malicious, probe(), "was refused"),
    ("memory_probes", wider_network, probe(), "does not fit the ppo + gru agent"),
    ("memory_probes", keep, probe("--episodes", "1"), "--episodes must be at least 2"),
    # compare-backbones over a study dir
    ("compare-backbones", write_text("eval.json", "{not json"), study(), "eval.json is not valid JSON"),
    ("compare-backbones", write_text("eval.json", ""), study(), "eval.json is not valid JSON"),
    ("compare-backbones",
     edit_json("eval.json", lambda evaluation: {k: v for k, v in evaluation.items() if k != "success_rate"}),
     study(), "has no 'success_rate' entry"),
    ("compare-backbones", edit_json("eval.json", lambda evaluation: {**evaluation, "success_rate": "high"}),
     study(), "'success_rate' is 'high' (expected int or float)"),
    ("compare-backbones", write_text("config.json", "\x00\x01"), study(), "config.json is not valid JSON"),
    ("compare-backbones", edit_json("config.json", lambda config: {k: v for k, v in config.items() if k != "preset"}),
     study(), "has no 'preset' entry"),
    ("compare-backbones", keep, study("--seeds", "0"), "--seeds must be 1 or more"),
    # atari100k over a suite dir
    ("atari100k", write_text("eval.json", "[]"), suite(), "has no 'success_rate' entry"),
    ("atari100k", edit_json("eval.json", lambda evaluation: {**evaluation, "global_step": 1.5}),
     suite(), "'global_step' is 1.5 (expected int)"),
    ("atari100k", edit_json("config.json", lambda config: {**config, "run": {**config["run"], "env_options": []}}),
     suite(), "'run.env_options' is [] (expected dict)"),
    ("atari100k", write_text("config.json", "{\"preset\": "), suite(), "config.json is not valid JSON"),
    ("atari100k", keep, suite("--games", "nosuchgame"), "unknown Atari100k game 'nosuchgame'"),
]


def case_id(case) -> str:
    cli, damage, _, message = case
    return f"{cli}-{getattr(damage, '__name__', 'edit')}-{message[:30]}"


def test_the_table_is_broad():
    assert len(CASES) >= 30
    assert {case[0] for case in CASES} == set(CLIS)


@pytest.mark.parametrize("cli, damage, arguments, message", CASES, ids=[case_id(case) for case in CASES])
def test_misuse_is_one_sentence_and_exit_code_2(tmp_path, trained, cli, damage, arguments, message):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    damage(run_dir)
    argv = arguments(run_dir, tmp_path)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = CLIS[cli](argv)
        except SystemExit as exit_:
            code = exit_.code
    text = stderr.getvalue()
    assert code == 2, text
    assert text.startswith(f"{cli}: error: ") and message in text, text
    assert text.count("\n") == 1 and "Traceback" not in text, text
    assert not list(tmp_path.rglob("marker")), "a loader ran code from the file"


@pytest.mark.parametrize("damage, message", [(malicious, "was refused"), (truncate, "truncated")])
def test_a_real_process_reports_a_broken_checkpoint_in_one_line(tmp_path, trained, damage, message):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    damage(run_dir)
    result = subprocess.run([sys.executable, "-m", "agents.train", "--resume", "--run-dir", str(run_dir), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (run_dir / "marker").exists()

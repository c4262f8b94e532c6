"""compare-backbones: the grid, resumption, bad input, and a tiny end-to-end study."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from memory import BACKBONES
from scripts import compare_backbones
from scripts.compare_backbones import (
    build_grid,
    curve_on_grid,
    main,
    max_mean_episodic_return,
    mmer_markdown,
    normalised_auc,
    normalised_mmer,
    read_curves,
    read_earlier_runs,
    run_grid,
)

SMOKE = ["--preset", "smoke", "--total-steps", "1024", "--eval-episodes", "8"]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_nests_env_agent_backbone_seed_into_run_dirs(tmp_path):
    runs = build_grid(["ppo"], ["s5", "none"], ["memory-retention", "memory-rewrite"], 2, tmp_path)
    assert len(runs) == 8
    assert [(run.env, run.backbone, run.seed) for run in runs[:4]] == [
        ("memory-retention", "s5", 1), ("memory-retention", "s5", 2),
        ("memory-retention", "none", 1), ("memory-retention", "none", 2)]
    assert runs[-1].run_dir == tmp_path / "memory-rewrite" / "ppo__none" / "seed2"


def test_dry_run_prints_each_run_with_its_status(tmp_path, capsys):
    study = tmp_path / "study"
    done = study / "memory-retention" / "ppo__gru" / "seed1"
    done.mkdir(parents=True)
    (done / "eval.json").write_text("{}")
    (done / "checkpoint.pt").write_bytes(b"")
    half = study / "memory-retention" / "ppo__gru" / "seed2"
    half.mkdir(parents=True)
    (half / "checkpoint.pt").write_bytes(b"")
    assert main(["--backbones", "none", "gru", "--envs", "memory-retention", "--seeds", "2",
                 "--study-dir", str(study), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["new", "new", "done", "resume"]
    assert lines[3].endswith(str(half)) and "ppo__gru seed2" in lines[3]
    assert not (study / "memory-retention" / "ppo__none").exists()

    assert main(["--backbones", "all", "--envs", "memory-retention", "--seeds", "1",
                 "--study-dir", str(study), "--dry-run"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(BACKBONES)


def test_run_grid_skips_finished_runs_resumes_checkpointed_ones_and_counts_failures(tmp_path, monkeypatch, capsys):
    runs = build_grid(["ppo"], ["gru"], ["memory-retention"], 3, tmp_path)
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "eval.json").write_text("{}")
    runs[1].run_dir.mkdir(parents=True)
    (runs[1].run_dir / "checkpoint.pt").write_bytes(b"")
    calls = []

    def fake_execute(arguments, log_path, torch_threads):
        calls.append(arguments)
        run_dir = arguments[arguments.index("--run-dir") + 1]
        if "--resume" in arguments:
            evaluation = {"success_rate": 1.0, "return_mean": 0.5, "global_step": 1024, "train_wall_time_seconds": 2.0}
            (tmp_path / run_dir / "eval.json").write_text(json.dumps(evaluation))
            return 0, 3.0
        return 1, 1.0

    monkeypatch.setattr(compare_backbones, "execute", fake_execute)
    failures = run_grid(runs, ["--total-steps", "1024"], workers=2, torch_threads=1)
    assert failures == 1
    by_seed = {call[call.index("--seed") + 1]: call for call in calls}
    assert sorted(by_seed) == ["2", "3"]
    assert "--resume" in by_seed["2"] and "--resume" not in by_seed["3"]
    assert by_seed["3"][-2:] == ["--total-steps", "1024"]
    out = capsys.readouterr().out
    assert "seed2: success 1.000, return 0.500, 512 SPS" in out
    assert "seed3: FAILED (exit 1); see" in out


def test_learning_curve_is_binned_then_interpolated_and_its_auc_is_normalised():
    grid = np.linspace(0, 100, 11)
    curve = curve_on_grid(np.array([12.0, 18.0, 95.0]), np.array([0.0, 1.0, 1.0]), grid)
    assert curve[0] == curve[1] == 0.5  # the first cell's mean, held before its centre
    assert curve[-1] == 1.0
    assert 0.0 <= normalised_auc(curve) <= 1.0
    assert normalised_auc(np.ones(11)) == 1.0
    assert np.isnan(curve_on_grid(np.zeros(0), np.zeros(0), grid)).all()


def test_mmer_is_the_best_mean_return_of_any_percent_of_training_and_is_normalised():
    steps = np.array([5.0, 15.0, 16.0, 55.0, 55.4, 95.0])
    returns = np.array([-1.0, 0.2, 0.6, 1.0, 0.0, 0.5])  # the two episodes logged at 55-56 average 0.5
    assert max_mean_episodic_return(steps, returns, total_steps=100) == pytest.approx(0.6)
    assert max_mean_episodic_return(steps[:1], returns[:1], total_steps=100) == -1.0
    assert np.isnan(max_mean_episodic_return(np.zeros(0), np.zeros(0), total_steps=100))
    assert (normalised_mmer(-1.0), normalised_mmer(0.6), normalised_mmer(1.0)) == (0.0, 0.8, 1.0)


def test_mmer_matrix_shows_each_env_and_averages_normalised_mmer_only_for_backbones_that_finished_every_env():
    def row(env, backbone, normalised):
        mmer = 2 * normalised - 1
        return {"env": env, "agent": "ppo", "backbone": backbone, "mmer_mean": mmer, "mmer_mean_low": mmer,
                "mmer_mean_high": mmer, "mmer_normalised_mean": normalised, "mmer_normalised_mean_low": normalised,
                "mmer_normalised_mean_high": normalised}

    rows = [row("a", "gru", 0.9), row("a", "none", 0.5), row("b", "gru", 0.7)]
    records = [{"mmer_source": "window"}] * 2 + [{"mmer_source": "bins"}]
    lines = mmer_markdown(rows, records)
    assert any("for 2 of the 3 runs as RLlib's" in line and "for 1 of the 3 runs as the mean over the episodes "
               "that ended in each 1%" in line for line in lines)
    assert "| a | ppo | gru | 0.800 [0.800, 0.800] | 0.900 [0.900, 0.900] |" in lines
    assert "| agent | backbone | a | b | mean normalised MMER |" in lines
    assert "| ppo | gru | 0.800 | 0.400 | 0.800 |" in lines  # MMER per env, then the mean normalised MMER
    assert "| ppo | none | 0.000 | — | — |" in lines  # none has not finished env b: no mean
    assert not any("averaged over" in line for line in mmer_markdown(rows[:2], records[:2]))


def test_a_curriculum_starts_each_new_run_from_its_own_run_on_the_earlier_env(tmp_path, monkeypatch):
    runs = build_grid(["dagger"], ["s5", "gru"], ["tmaze-passive-l500"], 2, tmp_path)
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "checkpoint.pt").write_bytes(b"")
    calls = []

    def fake_execute(arguments, log_path, torch_threads):
        calls.append(arguments)
        return 1, 1.0

    monkeypatch.setattr(compare_backbones, "execute", fake_execute)
    run_grid(runs, [], workers=1, torch_threads=1, init_from_env="memory-retention")
    by_run = {(call[call.index("--backbone") + 1], call[call.index("--seed") + 1]): call for call in calls}
    assert "--resume" in by_run["s5", "1"] and "--init-from" not in by_run["s5", "1"]
    for backbone, seed in [("s5", "2"), ("gru", "1"), ("gru", "2")]:
        call = by_run[backbone, seed]
        assert call[call.index("--init-from") + 1] == str(tmp_path / "memory-retention" / f"dagger__{backbone}"
                                                          / f"seed{seed}")


def test_a_curriculum_whose_earlier_runs_are_unfinished_is_refused_in_one_sentence(tmp_path, capsys):
    study = tmp_path / "study"
    finished = study / "memory-retention" / "dagger__s5" / "seed1"
    finished.mkdir(parents=True)
    (finished / "eval.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--agents", "dagger", "--backbones", "s5", "--envs", "tmaze-passive-l500", "--seeds", "2",
              "--init-from-env", "memory-retention", "--study-dir", str(study)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{study / 'memory-retention' / 'dagger__s5' / 'seed2'} is not a finished run (no eval.json)" in err
    assert len(err.strip().splitlines()) == 1
    assert not (study / "tmaze-passive-l500").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbones", "lsmt"], "unknown backbone 'lsmt'; choose from: all, none"),
        (["--envs", "nowhere"], "unknown env 'nowhere'"),
        (["--agents", "sarsa"], "unknown agent 'sarsa'"),
        (["--seeds", "0"], "--seeds must be 1 or more, got 0"),
        (["--train-arg", "seed=4"], "sets seed, which the study sets itself"),
        (["--train-arg", "no_such_setting=1"], "must be KEY=VALUE with KEY a train-agent setting"),
        (["--train-arg", "num_envs=6", "--train-arg", "num_minibatches=4"], "must be divisible by --num-minibatches"),
        (["--eval-episodes", "0"], "--eval-episodes must be 1 or more"),
        (["--envs", "memory-retention", "--init-from-env", "memory-retention"], "is also in --envs; train it first"),
    ],
    ids=["backbone", "env", "agent", "seeds", "grid-setting", "unknown-setting", "train-agent-check", "no-eval",
         "curriculum-in-grid"],
)
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--study-dir", str(tmp_path / "study"), "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_address_without_ray_asks_to_install_it_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scripts.compare_backbones", "--ray-address", "auto",
                             "--study-dir", str(tmp_path), "--dry-run"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "pip install ray" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_tiny_study_trains_aggregates_plots_and_resumes(tmp_path, capsys):
    study, output = tmp_path / "study", tmp_path / "out"
    argv = ["--backbones", "none", "gru", "--envs", "memory-retention", "--seeds", "2", "--workers", "2",
            "--study-dir", str(study), "--output-dir", str(output), *SMOKE]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs: 4 new, 0 to resume, 0 done" in out and out.count("SPS") == 4

    runs = read_csv(output / "runs.csv")
    assert [(row["backbone"], row["seed"]) for row in runs] == [("none", "1"), ("none", "2"), ("gru", "1"), ("gru", "2")]
    for row in runs:
        assert 0.0 <= float(row["success_rate"]) <= 1.0 and 0.0 <= float(row["auc"]) <= 1.0
        assert float(row["sps"]) > 0 and int(row["parameters"]) > 0 and float(row["peak_memory_mb"]) > 0
        assert int(row["global_step"]) == 1024 and row["preset"] == "smoke"
        assert -1.0 <= float(row["mmer"]) <= 1.0 and float(row["mmer_normalised"]) == pytest.approx(0.5 * float(row["mmer"]) + 0.5, abs=1e-5)
        tag = compare_backbones.SMOOTHED_RETURN_TAG
        smoothed = read_curves(row["run_dir"], (tag,))[tag][1]
        assert row["mmer_source"] == "window" and float(row["mmer"]) == pytest.approx(smoothed.max())
    results = read_csv(output / "results.csv")
    assert [(row["env"], row["agent"], row["backbone"], row["seeds"]) for row in results] == [
        ("memory-retention", "ppo", "none", "2"), ("memory-retention", "ppo", "gru", "2")]
    for row in results:
        for metric in ("success", "auc"):
            for statistic in ("iqm", "mean"):
                low, point, high = (float(row[f"{metric}_{statistic}{suffix}"]) for suffix in ("_low", "", "_high"))
                assert 0.0 <= low <= point <= high <= 1.0
        assert -1.0 <= float(row["return_mean"]) <= 1.0
    assert int(results[1]["parameters"]) > int(results[0]["parameters"])  # a GRU has more weights than the MLP

    markdown = (output / "results.md").read_text()
    assert "## memory-retention — ppo" in markdown and "| none | 2 |" in markdown and "| gru | 2 |" in markdown
    assert "commit" in markdown and "compare-backbones --backbones none gru" in markdown
    assert "torch" in markdown and "1,024 env steps per run, preset smoke" in markdown
    assert "## MMER (POPGym's score)" in markdown and "| memory-retention | ppo | gru |" in markdown
    per_seed = {(row["backbone"], row["seed"]): f"{float(row['success_rate']):.3f}" for row in runs}
    assert "| backbone | seed 1 | seed 2 |" in markdown
    for backbone in ("none", "gru"):
        assert f"| {backbone} | {per_seed[backbone, '1']} | {per_seed[backbone, '2']} |" in markdown
    assert "for 4 of the 4 runs as RLlib's" in markdown
    for name in compare_backbones.PLOT_NAMES:
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(output.glob(".*.tmp"))

    interrupted = study / "memory-retention" / "ppo__gru" / "seed2"
    (interrupted / "eval.json").unlink()
    checkpoint = (interrupted / "checkpoint.pt").read_bytes()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs: 0 new, 1 to resume, 3 done" in out and "[1/1] memory-retention ppo__gru seed2" in out
    assert (interrupted / "eval.json").exists()
    assert (interrupted / "checkpoint.pt").read_bytes() == checkpoint  # finished training was not redone
    commands = [line for line in (interrupted / "train.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and not commands[0].endswith("--resume") and commands[1].endswith("--resume")

    elsewhere = tmp_path / "elsewhere"  # the study's outputs carried to a machine without its run dirs
    elsewhere.mkdir()
    for name in ("runs.csv", "curves.csv"):
        (elsewhere / name).write_bytes((output / name).read_bytes())
    curves = read_csv(output / "curves.csv")
    assert {(row["backbone"], row["seed"]) for row in curves} == {("none", "1"), ("none", "2"), ("gru", "1"), ("gru", "2")}
    assert all(0 < float(row["step"]) < 1024 and 0.0 <= float(row["success"]) <= 1.0 for row in curves)
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main([*argv, "--study-dir", str(tmp_path / "empty"), "--output-dir", str(merged),
                 "--earlier-runs", str(elsewhere / "runs.csv")]) == 0
    assert "4 runs: 0 new, 0 to resume, 0 done, 4 from --earlier-runs" in capsys.readouterr().out  # nothing retrained
    assert not (tmp_path / "empty").exists()
    assert read_csv(merged / "runs.csv") == read_csv(output / "runs.csv")
    assert read_csv(merged / "curves.csv") == curves
    for original, again in zip(read_csv(output / "results.csv"), read_csv(merged / "results.csv"), strict=True):
        assert again.keys() == original.keys()
        numbers = [column for column, value in original.items() if is_number(value)]
        assert {column: again[column] for column in original if column not in numbers} == {
            column: value for column, value in original.items() if column not in numbers}
        assert [float(again[column]) for column in numbers] == pytest.approx([float(original[column]) for column in numbers], rel=1e-5)
    assert "- 4 of them aggregated from --earlier-runs" in (merged / "results.md").read_text()


def test_earlier_runs_without_their_curves_are_refused_in_one_sentence(tmp_path, capsys):
    (tmp_path / "runs.csv").write_text(",".join(compare_backbones.RUN_COLUMNS) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbones", "gru", "--study-dir", str(tmp_path / "study"), "--aggregate-only",
              "--earlier-runs", str(tmp_path / "runs.csv")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--earlier-runs needs {tmp_path / 'curves.csv'}, which cannot be read" in err
    assert len(err.strip().splitlines()) == 1


def test_an_earlier_runs_csv_from_before_mmer_sources_reads_as_binned_mmer(tmp_path):
    older_columns = [name for name in compare_backbones.RUN_COLUMNS if name != "mmer_source"]
    values = {"env": "popgym-repeat-first-easy", "agent": "ppo", "backbone": "gru", "seed": "1", "run_dir": "gone",
              "preset": "memory-rewrite"}
    (tmp_path / "runs.csv").write_text(",".join(older_columns) + "\n"
                                       + ",".join(values.get(name, "1") for name in older_columns) + "\n")
    (tmp_path / "curves.csv").write_text(",".join(compare_backbones.CURVE_COLUMNS) + "\n")
    (record,) = read_earlier_runs(tmp_path / "runs.csv").values()
    assert record["mmer_source"] == "bins" and record["backbone"] == "gru" and record["mmer"] == 1.0

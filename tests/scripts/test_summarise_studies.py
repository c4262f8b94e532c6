"""summarise-studies: several compare-backbones output dirs side by side, and bad input."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys

import pytest

from scripts.summarise_studies import TABLE_END, TABLE_START, main

RESULT_COLUMNS = ("env", "agent", "backbone", "seeds", "success_mean", "mmer_normalised_mean", "global_step")


def write_results(study, rows):
    study.mkdir(parents=True)
    with open(study / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(dict(zip(RESULT_COLUMNS, row)) for row in rows)


@pytest.fixture
def two_studies(tmp_path):
    maze = tmp_path / "maze"
    write_results(maze, [("endless-tmaze-fixed-l10-n3", "ppo", "s5", 3, 1.0, 0.9, 303104),
                         ("endless-tmaze-fixed-l10-n3", "ppo", "gru", 3, 0.125, 0.4, 303104)])
    popgym = tmp_path / "popgym"
    write_results(popgym, [("popgym-autoencode-medium", "ppo", "gru", 2, 0.0, 0.31, 102400),
                           ("popgym-autoencode-medium", "ppo", "none", 1, 0.0, 0.25, 102400)])
    return maze, popgym


def test_each_env_is_scored_by_its_fields_metric_in_one_row_per_backbone(two_studies, tmp_path):
    maze, popgym = two_studies
    out = tmp_path / "summary"
    assert main([str(maze), str(popgym), "--output-dir", str(out)]) == 0
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = {(row["env"], row["backbone"]): (row["metric"], float(row["score"])) for row in rows}
    assert scores == {
        ("endless-tmaze-fixed-l10-n3", "s5"): ("success", 1.0),
        ("endless-tmaze-fixed-l10-n3", "gru"): ("success", 0.125),
        ("popgym-autoencode-medium", "gru"): ("normalised MMER", 0.31),
        ("popgym-autoencode-medium", "none"): ("normalised MMER", 0.25),
    }
    table = (out / "summary.md").read_text().splitlines()
    assert "success, 303,104 steps, 3 seeds" in table[0] and "normalised MMER, 102,400 steps, 1-2 seeds" in table[0]
    assert table[2:] == ["| `s5` | 1.000 | — |", "| `gru` | 0.125 | 0.310 |", "| `none` | — | 0.250 |"]
    assert (out / "summary.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_columns_name_their_agent_when_envs_differ_in_it_and_rows_do_when_one_env_holds_two(two_studies, tmp_path):
    maze, _ = two_studies
    dagger = tmp_path / "dagger"
    write_results(dagger, [("tmaze-passive-l500", "dagger", "s5", 3, 1.0, 1.0, 300576)])
    assert main([str(maze), str(dagger), "--output-dir", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert "endless-tmaze-fixed-l10-n3<br>ppo, success, 303,104 steps" in table[0]
    assert "tmaze-passive-l500<br>dagger, success, 300,576 steps" in table[0]
    assert table[2:] == ["| `s5` | 1.000 | 1.000 |", "| `gru` | 0.125 | — |"]
    both = tmp_path / "both"
    write_results(both, [("tmaze-passive-l500", "dagger", "s5", 3, 1.0, 1.0, 300576),
                         ("tmaze-passive-l500", "ppo", "s5", 3, 0.0, 0.5, 300576)])
    assert main([str(maze), str(both), "--output-dir", str(tmp_path / "out2")]) == 0
    table = (tmp_path / "out2" / "summary.md").read_text().splitlines()
    assert "<br>success, 300,576 steps" in table[0] and "dagger," not in table[0]
    assert table[2:] == ["| `ppo + s5` | 1.000 | 0.000 |", "| `ppo + gru` | 0.125 | — |",
                         "| `dagger + s5` | — | 1.000 |"]


def test_readme_gets_the_table_between_its_markers_and_nothing_else_changes(two_studies, tmp_path):
    maze, popgym = two_studies
    readme = tmp_path / "README.md"
    readme.write_text(f"# Study\n\nIntro.\n{TABLE_START}\n| stale | table |\n{TABLE_END}\n\nFindings.\n")
    arguments = [str(maze), str(popgym), "--output-dir", str(tmp_path / "out"), "--readme", str(readme)]
    assert main(arguments) == 0
    table = (tmp_path / "out" / "summary.md").read_text()
    expected = f"# Study\n\nIntro.\n{TABLE_START}\n{table}{TABLE_END}\n\nFindings.\n"
    assert readme.read_text() == expected
    assert main(arguments) == 0
    assert readme.read_text() == expected


@pytest.mark.parametrize("case, message", [
    ("no results", "has no results.csv: give output dirs written by compare-backbones"),
    ("env twice", "env endless-tmaze-fixed-l10-n3 is in both"),
    ("readme without markers", f"must hold the line {TABLE_START} and after it {TABLE_END}, once each"),
    ("readme missing", "is not a file: give a markdown file holding the two table markers"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(two_studies, tmp_path, case, message):
    maze, popgym = two_studies
    readme = tmp_path / "README.md"
    readme.write_text(f"# Study\n{TABLE_END}\n{TABLE_START}\n")
    extra = []
    if case == "no results":
        studies = [str(maze), str(tmp_path / "missing")]
    elif case == "env twice":
        studies = [str(maze), str(maze)]
    else:
        studies = [str(maze), str(popgym)]
        extra = ["--readme", str(readme if case == "readme without markers" else tmp_path / "absent.md")]
    result = subprocess.run([sys.executable, "-m", "scripts.summarise_studies", *studies, "--output-dir",
                             str(tmp_path / "out"), *extra], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert readme.read_text() == f"# Study\n{TABLE_END}\n{TABLE_START}\n"

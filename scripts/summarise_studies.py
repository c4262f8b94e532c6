"""Put several compare-backbones studies side by side: one table and one heatmap, backbone x task.

    python -m scripts.summarise_studies benchmarks/studies/endless-tmaze-fixed-l10-n3 \\
        benchmarks/studies/endless-tmaze-uniform-l10-n3 benchmarks/studies/popgym-medium \\
        --output-dir benchmarks/studies/hard --readme benchmarks/studies/hard/README.md

Each argument is an output dir of `compare-backbones` (its `results.csv` is read; nothing is retrained).
Every env is scored with the metric its field reports, as the mean over the study's seeds: POPGym envs
(`popgym-*`) by normalised MMER (0.5 MMER + 0.5, POPGym's score), every other env by final greedy success.
An env may come from one study only (two budgets of one env are two studies' business, not one column's).

Writes into `--output-dir`, each atomically: `summary.csv` (one row per env x agent x backbone: the metric,
its mean over seeds, the seeds, the env steps, the study it came from), `summary.md` (a table with a row per
backbone and a column per env, the env's metric, steps and seeds in the header, and its agent when the envs were
trained by different agents; a row per agent and backbone only when one env holds several) and, with matplotlib installed,
`summary.png` (the same grid as a heatmap). Each `--readme FILE` gets the same table written in place of
whatever stands between its two marker lines (TABLE_START, TABLE_END), so that a README's copy cannot drift
from the results; every file is checked before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import sys
from pathlib import Path

from agents.run import write_atomically
from scripts.compare_backbones import plot_heatmap, row_label, write_csv

RESULTS_NAME = "results.csv"
SUMMARY_COLUMNS = ("env", "agent", "backbone", "metric", "score", "seeds", "global_step", "study")
METRIC_COLUMNS = {"success": "success_mean", "normalised MMER": "mmer_normalised_mean"}
"""Metric name -> the results.csv column (a mean over seeds) it is read from."""
TABLE_START = "<!-- summarise-studies table: start -->"
TABLE_END = "<!-- summarise-studies table: end -->"


class UsageError(ValueError):
    """Bad input: reported in one sentence, exit code 2."""


def metric_of(env: str) -> str:
    """The score an env's field reports: POPGym's normalised MMER for its tasks, greedy success otherwise."""
    return "normalised MMER" if env.startswith("popgym-") else "success"


def read_study(study: Path) -> list[dict]:
    """The summary rows of one compare-backbones output dir, in its results.csv order."""
    path = study / RESULTS_NAME
    if not path.is_file():
        raise UsageError(f"{study} has no {RESULTS_NAME}: give output dirs written by compare-backbones")
    with open(path, newline="") as handle:
        results = list(csv.DictReader(handle))
    rows = []
    for result in results:
        metric = metric_of(result["env"])
        column = METRIC_COLUMNS[metric]
        if column not in result:
            raise UsageError(f"{path} has no {column} column: aggregate it again with this memrl's compare-backbones")
        score = float(result[column]) if result[column] else math.nan
        rows.append({"env": result["env"], "agent": result["agent"], "backbone": result["backbone"], "metric": metric,
                     "score": score, "seeds": int(result["seeds"]), "global_step": float(result["global_step"]),
                     "study": str(study)})
    return rows


def collect(studies: list[Path]) -> list[dict]:
    """Every study's rows; an env found in two studies is refused."""
    rows: list[dict] = []
    source_of_env: dict[str, Path] = {}
    for study in studies:
        study_rows = read_study(study)
        for env in dict.fromkeys(row["env"] for row in study_rows):
            if env in source_of_env:
                raise UsageError(f"env {env} is in both {source_of_env[env]} and {study}; give each env's study once")
            source_of_env[env] = study
        rows += study_rows
    if not rows:
        raise UsageError("the studies hold no results: give output dirs of finished compare-backbones studies")
    return rows


def agent_in_header(rows: list[dict]) -> bool:
    """Whether the columns name their agent: true when the studies use several agents but each env only one
    (e.g. PPO cells beside a DAgger cell), so that rows stay one per backbone."""
    agents_of_env: dict[str, set[str]] = {}
    for row in rows:
        agents_of_env.setdefault(row["env"], set()).add(row["agent"])
    return len({row["agent"] for row in rows}) > 1 and all(len(agents) == 1 for agents in agents_of_env.values())


def summary_markdown(rows: list[dict]) -> str:
    """Backbones as rows, envs as columns (metric, steps and seeds in the header, and the agent when the
    columns differ in it); rows are agent + backbone only when one env holds several agents."""
    envs = list(dict.fromkeys(row["env"] for row in rows))
    named_agents = agent_in_header(rows)
    several_agents = len({row["agent"] for row in rows}) > 1 and not named_agents
    labels = list(dict.fromkeys(row_label(row, several_agents) for row in rows))
    cell = {(row_label(row, several_agents), row["env"]): row for row in rows}
    header = ["backbone"]
    for env in envs:
        env_rows = [row for row in rows if row["env"] == env]
        fewest, most = min(row["seeds"] for row in env_rows), max(row["seeds"] for row in env_rows)
        seeds = f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}-{most} seeds"
        agent = f"{env_rows[0]['agent']}, " if named_agents else ""
        header.append(f"{env}<br>{agent}{env_rows[0]['metric']}, {env_rows[0]['global_step']:,.0f} steps, {seeds}")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(envs)]
    for label in labels:
        values = []
        for env in envs:
            row = cell.get((label, env))
            values.append("—" if row is None or math.isnan(row["score"]) else f"{row['score']:.3f}")
        lines.append(f"| `{label}` | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def check_readme(path: Path) -> str:
    """The README's text, refused unless it holds TABLE_START and then TABLE_END, once each."""
    if not path.is_file():
        raise UsageError(f"--readme {path} is not a file: give a markdown file holding the two table markers")
    text = path.read_text()
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_START) > text.index(TABLE_END):
        raise UsageError(f"--readme {path} must hold the line {TABLE_START} and after it {TABLE_END}, once each")
    return text


def with_table(text: str, table: str) -> str:
    """The text with everything between the markers replaced by the table."""
    before, rest = text.split(TABLE_START)
    after = rest.split(TABLE_END)[1]
    return f"{before}{TABLE_START}\n{table}{TABLE_END}{after}"


def write_summary(rows: list[dict], output_dir: Path, readmes: dict[Path, str]) -> list[Path]:
    """summary.csv, summary.md, (with matplotlib) summary.png and the table in each README (path -> its checked
    text); returns the files written."""
    written = [output_dir / "summary.csv", output_dir / "summary.md"]
    write_csv(written[0], rows, list(SUMMARY_COLUMNS))
    table = summary_markdown(rows)
    write_atomically(written[1], table.encode())
    for path, text in readmes.items():
        write_atomically(path, with_table(text, table).encode())
        written.append(path)
    if importlib.util.find_spec("matplotlib") is not None:
        if agent_in_header(rows):
            heatmap_rows = [{**row, "env": f"{row['env']}\n({row['agent']}, {row['metric']})", "agent": ""}
                            for row in rows]
        else:
            heatmap_rows = [{**row, "env": f"{row['env']}\n({row['metric']})"} for row in rows]
        plot_heatmap(heatmap_rows, output_dir / "summary.png", "score", "mean over seeds")
        written.append(output_dir / "summary.png")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="summarise-studies",
        description="Put the results of several compare-backbones output dirs side by side, backbone x env.")
    parser.add_argument("studies", nargs="+", type=Path, help="compare-backbones output dirs (each with results.csv)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where summary.csv, .md and .png are written")
    parser.add_argument("--readme", type=Path, action="append", default=[],
                        help=f"a markdown file whose lines {TABLE_START} and {TABLE_END} get the table between them "
                             "(repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rows = collect(args.studies)
        readmes = {path: check_readme(path) for path in args.readme}
    except UsageError as error:
        parser.exit(2, f"summarise-studies: error: {error}\n")
    written = write_summary(rows, args.output_dir, readmes)
    print(f"summarise-studies: wrote {', '.join(str(path) for path in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`atari100k`: the Atari100k suite: train agents x backbones on the 26 games x seeds, then score them.

    atari100k --agents ppo dreamer --backbones gru --seeds 5 --output-dir benchmarks/atari100k
    atari100k --games pong boxing --seeds 1 --total-steps 20000 --eval-episodes 10   # a REDUCED budget

Every run is an ordinary train-agent run dir, `<study-dir>/atari100k-<game>/<agent>__<backbone>/seed<k>`,
trained by its own `python -m agents.train --env atari100k-<game> --total-steps N --eval-episodes E
--run-dir <dir> --quiet` process (its output goes to `train.log` there), with the agent's `atari100k`
preset unless `--preset` names another. train-agent's final evaluation plays `--eval-episodes` whole
games (no life-loss episodes, unclipped rewards); a run's game score is their mean return. Running
the same command again resumes the suite: a run with `eval.json` is skipped, a run with only a
checkpoint is continued with `--resume`. A suite split across machines is scored whole with
`--earlier-runs <runs.csv>`: a run with no finished run dir here takes its row from that file.

The protocol (see `envs.atari`) is 100k agent steps (400k frames) of training, 100 evaluation
episodes and games of at most 108,000 frames. A run below any of these is labelled REDUCED, with
what was reduced, in every file and in the printed table.

Written to the output dir: `runs.csv` (one row per run: game score, human-normalised score
HNS = (score - random) / (human - random), budget), `results.csv` (one row per agent x backbone:
mean, median and IQM of the HNS over games with 95% stratified-bootstrap intervals over seeds, from
`agents.scores`) and `results.md` (provenance, budget, a per-game table of scores beside the random,
human and published DreamerV3, STORM, DIAMOND, IRIS and TWM scores, the aggregates, and the
published agents' aggregates over the same games). The tables are also printed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from agents import scores
from agents.run import ArtifactError, read_json, write_atomically
from agents.train import AGENTS, CONFIG_FIELDS, EVAL_FIELDS, UsageError, parse_json_object, resolve_config
from agents.train import build_parser as build_train_parser
from envs.atari import (
    ENV_PREFIX,
    FRAME_SKIP,
    PROTOCOL_AGENT_STEPS,
    PROTOCOL_EPISODE_FRAMES,
    PROTOCOL_EVAL_EPISODES,
    atari_game,
    games,
    reference_scores,
)
from memory import BACKBONES
from scripts.compare_backbones import (
    GridRun,
    build_grid,
    collect_records,
    describe_machine,
    execute,
    git_commit,
    run_status,
    status_counts,
    study_status,
    train_agent_arguments,
    train_arguments,
    write_csv,
)

PUBLISHED = {"dreamerv3": "DreamerV3", "storm": "STORM", "diamond": "DIAMOND", "iris": "IRIS", "twm": "TWM"}
"""Published agents' columns of the reference CSV -> their names in tables."""


# -- scores ----------------------------------------------------------------------------------


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random) with the reference random and human scores of `game`."""
    reference = reference_scores()[game]
    return float(scores.human_normalized(score, reference["random"], reference["human"]))


def budget_shortfalls(agent_steps: int, eval_episodes: int, max_episode_frames: int) -> list[str]:
    """What falls below the protocol, in words; empty for a protocol run."""
    shortfalls = []
    if agent_steps < PROTOCOL_AGENT_STEPS:
        shortfalls.append(f"{agent_steps:,} agent steps of training (protocol {PROTOCOL_AGENT_STEPS:,})")
    if eval_episodes < PROTOCOL_EVAL_EPISODES:
        shortfalls.append(f"{eval_episodes} evaluation episodes (protocol {PROTOCOL_EVAL_EPISODES})")
    if max_episode_frames < PROTOCOL_EPISODE_FRAMES:
        shortfalls.append(f"games capped at {max_episode_frames:,} frames = {max_episode_frames // FRAME_SKIP:,} "
                          f"agent steps (protocol {PROTOCOL_EPISODE_FRAMES:,})")
    return shortfalls


RUN_COLUMNS = {"game": str, "agent": str, "backbone": str, "seed": int, "score": float, "score_std": float,
               "reduced": str, "agent_steps": int, "eval_episodes": int, "max_episode_frames": int,
               "preset": str, "train_wall_time_seconds": float, "run_dir": str}
"""The runs.csv columns a record is built from, with their types (HNS, budget and frames are computed)."""


def scored_record(fields: dict) -> dict:
    """A runs.csv row from a run's RUN_COLUMNS fields: adds its HNS, budget label and frames."""
    return {
        **{name: fields[name] for name in ("game", "agent", "backbone", "seed", "score", "score_std")},
        "hns": human_normalized_score(fields["game"], fields["score"]),
        "budget": "REDUCED" if fields["reduced"] else "protocol", "reduced": fields["reduced"],
        "agent_steps": fields["agent_steps"], "frames": fields["agent_steps"] * FRAME_SKIP,
        **{name: fields[name] for name in ("eval_episodes", "max_episode_frames", "preset",
                                           "train_wall_time_seconds", "run_dir")},
    }


def load_record(run: GridRun) -> dict | None:
    """One finished run's row of runs.csv; None if it has no eval.json."""
    if run_status(run.run_dir) != "done":
        return None
    evaluation = read_json(run.run_dir / "eval.json", EVAL_FIELDS)
    config = read_json(run.run_dir / "config.json", CONFIG_FIELDS)
    max_episode_frames = config["run"].get("env_options", {}).get("max_episode_frames", PROTOCOL_EPISODE_FRAMES)
    shortfalls = budget_shortfalls(evaluation["global_step"], evaluation["episodes"], max_episode_frames)
    return scored_record({
        "game": atari_game(run.env), "agent": run.agent, "backbone": run.backbone, "seed": run.seed,
        "score": evaluation["return_mean"], "score_std": evaluation["return_std"], "reduced": "; ".join(shortfalls),
        "agent_steps": evaluation["global_step"], "eval_episodes": evaluation["episodes"],
        "max_episode_frames": max_episode_frames, "preset": config["preset"],
        "train_wall_time_seconds": evaluation["train_wall_time_seconds"], "run_dir": str(run.run_dir),
    })


def read_earlier_runs(path: Path) -> dict[tuple[str, str, str, int], dict]:
    """The records of a runs.csv written earlier (on another machine or before its run dirs were lost),
    keyed by (env, agent, backbone, seed); one sentence for a missing file, column or bad value."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise UsageError(f"--earlier-runs {path} cannot be read ({error.strerror}); give a runs.csv this script wrote") from None
    records = {}
    for line, row in enumerate(rows, start=2):
        missing = [name for name in RUN_COLUMNS if row.get(name) is None]
        if missing:
            raise UsageError(f"--earlier-runs {path} has no {missing[0]!r} column; give a runs.csv this script wrote")
        try:
            record = {name: kind(row[name]) for name, kind in RUN_COLUMNS.items()}
        except ValueError:
            raise UsageError(f"--earlier-runs {path} line {line} has a value that is not a number where one is "
                             "needed; give a runs.csv this script wrote") from None
        if record["game"] not in games():
            raise UsageError(f"--earlier-runs {path} line {line} names the unknown game {record['game']!r}")
        records[(ENV_PREFIX + record["game"], record["agent"], record["backbone"], record["seed"])] = scored_record(record)
    return records


def hns_matrix(records: list[dict]) -> tuple[np.ndarray, list[str]]:
    """HNS as [seeds, games] over the games with finished runs, keeping on each game its lowest
    seeds up to the number every one of those games has (so the matrix is complete)."""
    by_game: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda record: record["seed"]):
        by_game.setdefault(record["game"], []).append(record)
    seeds = min(len(game_records) for game_records in by_game.values())
    matrix = np.array([[game_records[index]["hns"] for game_records in by_game.values()] for index in range(seeds)])
    return matrix, list(by_game)


def aggregate(records: list[dict]) -> list[dict]:
    """One results.csv row per agent x backbone: mean, median and IQM HNS with 95% stratified-bootstrap CIs."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["agent"], record["backbone"]), []).append(record)
    rows = []
    for (agent, backbone), group in groups.items():
        matrix, game_names = hns_matrix(group)
        reduced = sorted({record["reduced"] for record in group if record["reduced"]})
        row = {"agent": agent, "backbone": backbone, "games": len(game_names), "seeds": matrix.shape[0],
               "budget": "REDUCED" if reduced else "protocol", "reduced": " | ".join(reduced)}
        row.update({f"hns_{name}": value for name, value in scores.summarize(matrix).items()})
        rows.append(row)
    return rows


def published_aggregates(game_names: list[str]) -> dict[str, dict[str, float]]:
    """Published agent -> mean, median and IQM of its HNS over `game_names` (one score per game)."""
    reference = reference_scores()
    result = {}
    for column, label in PUBLISHED.items():
        row = np.array([[human_normalized_score(game, reference[game][column]) for game in game_names]])
        result[label] = {name: aggregate_fn(row) for name, aggregate_fn in scores.AGGREGATES.items()}
    return result


# -- outputs ---------------------------------------------------------------------------------


def _label(agent: str, backbone: str) -> str:
    return f"{agent} + {backbone}"


def _score(value: float) -> str:
    return f"{value:,.1f}"


def _interval(row: dict, name: str) -> str:
    return f"{row[name]:.3f} [{row[f'{name}_low']:.3f}, {row[f'{name}_high']:.3f}]"


def tables_markdown(rows: list[dict], records: list[dict]) -> str:
    """The per-game score table beside the published columns, then the HNS aggregates."""
    labels = list(dict.fromkeys(_label(record["agent"], record["backbone"]) for record in records))
    game_names = [game for game in games() if any(record["game"] == game for record in records)]
    reference = reference_scores()
    lines = ["## Scores per game", "",
             "Mean evaluation return over seeds (seeds in brackets); published scores from the reference table.", "",
             "| game | random | human | " + " | ".join(labels) + " | " + " | ".join(PUBLISHED.values()) + " |",
             "|---|" + "---:|" * (2 + len(labels) + len(PUBLISHED))]
    for game in game_names:
        cells = [_score(reference[game]["random"]), _score(reference[game]["human"])]
        for label in labels:
            values = [record["score"] for record in records
                      if record["game"] == game and _label(record["agent"], record["backbone"]) == label]
            cells.append(f"{_score(np.mean(values))} ({len(values)})" if values else "—")
        cells += [_score(reference[game][column]) for column in PUBLISHED]
        lines.append(f"| {game} | " + " | ".join(cells) + " |")
    lines += ["", "## Human-normalised score (HNS) over games", "",
              ("Mean, median (over games of the mean over seeds) and IQM (over all seed x game scores), "
               "each with its 95% stratified-bootstrap interval over seeds."), "",
              "| agent | games | seeds | budget | mean [95% CI] | median [95% CI] | IQM [95% CI] |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {_label(row['agent'], row['backbone'])} | {row['games']} | {row['seeds']} | {row['budget']} | "
                     f"{_interval(row, 'hns_mean')} | {_interval(row, 'hns_median')} | {_interval(row, 'hns_iqm')} |")
    lines += ["", f"Published agents over the same {len(game_names)} game(s) (one score per game, so no interval):", "",
              "| agent | mean | median | IQM |", "|---|---:|---:|---:|"]
    for label, values in published_aggregates(game_names).items():
        lines.append(f"| {label} | {values['mean']:.3f} | {values['median']:.3f} | {values['iqm']:.3f} |")
    return "\n".join(lines) + "\n"


def budget_lines(records: list[dict]) -> list[str]:
    """The budget, with REDUCED and what was reduced where a run fell below the protocol."""
    reduced = sorted({record["reduced"] for record in records if record["reduced"]})
    if not reduced:
        return [(f"- budget: the Atari100k protocol: {PROTOCOL_AGENT_STEPS:,} agent steps "
                 f"({PROTOCOL_AGENT_STEPS * FRAME_SKIP:,} frames) per run, {PROTOCOL_EVAL_EPISODES} evaluation "
                 f"episodes, games of at most {PROTOCOL_EPISODE_FRAMES:,} frames")]
    return [f"- budget: **REDUCED, not comparable with published Atari100k scores**: {text}" for text in reduced]


def results_markdown(rows: list[dict], records: list[dict], runs: list[GridRun], command: str,
                     from_earlier: int = 0) -> str:
    lines = [
        "# Atari100k" + (" (REDUCED budget)" if any(record["reduced"] for record in records) else ""),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {git_commit()}",
        f"- command: `{command}`",
        f"- machine (where this was written): {describe_machine()}",
        f"- runs finished: {len(records)} of {len(runs)}; presets {', '.join(sorted({r['preset'] for r in records}))}",
        *([f"- {from_earlier} of them scored from --earlier-runs (run on an earlier machine; their run dirs "
           "are not here)"] if from_earlier else []),
        *budget_lines(records),
    ]
    return "\n".join(lines) + "\n\n" + tables_markdown(rows, records)


def write_outputs(runs: list[GridRun], output_dir: Path, command: str,
                  earlier: dict[tuple[str, str, str, int], dict] | None = None) -> tuple[list[Path], str]:
    """Score the finished runs (and the earlier runs' records of the rest) into the output dir; returns
    the files written and the markdown."""
    records, from_earlier = collect_records(runs, earlier or {}, load_record)
    if not records:
        return [], ""
    rows = aggregate(records)
    markdown = results_markdown(rows, records, runs, command, from_earlier)
    written = [output_dir / "runs.csv", output_dir / "results.csv", output_dir / "results.md"]
    write_csv(written[0], records)
    write_csv(written[1], rows)
    write_atomically(written[2], markdown.encode())
    return written, markdown


# -- running ---------------------------------------------------------------------------------


def run_suite(runs: list[GridRun], train_args: list[str], workers: int, torch_threads: int) -> int:
    """Train every run that is not done (resuming those with a checkpoint), `workers` at a time,
    printing a line as each finishes; returns the number that failed."""
    jobs = [(run, train_agent_arguments(run, train_args, resume=run_status(run.run_dir) == "resume"))
            for run in runs if run_status(run.run_dir) != "done"]
    failures = 0
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = {executor.submit(execute, arguments, str(run.run_dir / "train.log"), torch_threads): run
                   for run, arguments in jobs}
        for position, future in enumerate(as_completed(futures), start=1):
            run = futures[future]
            returncode, seconds = future.result()
            name = f"[{position}/{len(jobs)}] {atari_game(run.env)} {run.label} seed{run.seed}"
            record = load_record(run) if returncode == 0 else None
            if record is None:
                failures += 1
                print(f"atari100k: {name}: FAILED (exit {returncode}); see {run.run_dir / 'train.log'}", flush=True)
                continue
            budget = " (REDUCED budget)" if record["reduced"] else ""
            print(f"atari100k: {name}: score {record['score']:,.1f} (HNS {record['hns']:.3f}) over "
                  f"{record['eval_episodes']} episodes, {seconds:.0f} s{budget}", flush=True)
    return failures


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atari100k",
        description="Train agents x backbones on the Atari100k games x seeds with train-agent, then score them "
                    "(human-normalised mean, median and IQM with bootstrap intervals) beside published agents.",
    )
    parser.add_argument("--games", nargs="+", default=["all"], help=f"games, or all: {', '.join(games())} (default all)")
    parser.add_argument("--agents", nargs="+", default=["ppo"], help=f"agents: {', '.join(AGENTS)} (default ppo)")
    parser.add_argument("--backbones", nargs="+", default=["gru"], help=f"backbones: {', '.join(BACKBONES)} (default gru)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per game, 1..SEEDS (default 5)")
    parser.add_argument("--total-steps", type=int, default=PROTOCOL_AGENT_STEPS,
                        help=f"agent steps of training per run (default {PROTOCOL_AGENT_STEPS:,} = "
                             f"{PROTOCOL_AGENT_STEPS * FRAME_SKIP:,} frames; less is labelled REDUCED)")
    parser.add_argument("--eval-episodes", type=int, default=PROTOCOL_EVAL_EPISODES,
                        help=f"evaluation episodes per run (default {PROTOCOL_EVAL_EPISODES}; less is labelled REDUCED)")
    parser.add_argument("--max-episode-frames", type=int, default=PROTOCOL_EPISODE_FRAMES,
                        help=f"truncate every game after this many frames, in training and evaluation (default "
                             f"{PROTOCOL_EPISODE_FRAMES:,} = {PROTOCOL_EPISODE_FRAMES // FRAME_SKIP:,} agent steps; "
                             "less is labelled REDUCED)")
    parser.add_argument("--env-options", type=parse_json_object, default={},
                        help="other env options of every run as JSON (envs.atari.AtariOptions), "
                             "added to the preset's, e.g. '{\"life_loss\": false}'")
    parser.add_argument("--preset", default=None, help="train-agent --preset of every run (default: the agent's atari100k)")
    parser.add_argument("--device", default=None, help="train-agent --device of every run (default auto)")
    parser.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="any other train-agent setting for every run, e.g. num_envs=16 (repeatable)")
    parser.add_argument("--study-dir", type=Path, default=Path("runs/studies/atari100k"),
                        help="run dirs go to STUDY_DIR/atari100k-<game>/<agent>__<backbone>/seed<k> "
                             "(default runs/studies/atari100k)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="runs.csv, results.csv and results.md (default benchmarks/studies/<name of the study dir>)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs at once (default CPU cores // --torch-threads)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads of each run (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs with each one's status and exit")
    parser.add_argument("--aggregate-only", action="store_true", help="skip training; score the finished runs")
    parser.add_argument("--earlier-runs", type=Path, default=None,
                        help="a runs.csv written earlier: a run with no finished run dir under --study-dir is "
                             "scored from its row there (a suite split across machines)")
    return parser


def select_games(names: list[str]) -> list[str]:
    """The games to run, in the benchmark's order; one sentence for an unknown name."""
    if names == ["all"]:
        return list(games())
    unknown = [name for name in names if name not in games()]
    if unknown:
        raise UsageError(f"unknown Atari100k game {unknown[0]!r}; choose all or from: {', '.join(games())}")
    return [game for game in games() if game in names]


def suite_train_arguments(args: argparse.Namespace) -> list[str]:
    """The train-agent flags of every run: budgets, env options, then --preset, --device and each --train-arg."""
    for name in ("seeds", "total_steps", "eval_episodes", "max_episode_frames", "torch_threads") + (
            ("workers",) if args.workers is not None else ()):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
    for pair in args.train_arg:
        name = pair.partition("=")[0].strip().lstrip("-").replace("-", "_")
        if name in ("env", "env_options", "total_steps", "eval_episodes"):
            raise UsageError(f"--train-arg {pair!r} sets {name}, which the suite sets itself "
                             "(--games, --env-options, --max-episode-frames, --total-steps, --eval-episodes)")
    env_options = {**args.env_options, "max_episode_frames": args.max_episode_frames}
    return [*train_arguments(args), "--env-options", json.dumps(env_options)]


def validate_suite(args: argparse.Namespace, game_names: list[str], train_args: list[str]) -> None:
    """Resolve every agent x backbone's train-agent config once, so a bad setting stops the suite before it starts."""
    train_parser = build_train_parser()
    train_parser.exit_on_error = False
    for agent in args.agents:
        for backbone in args.backbones:
            argv = ["--agent", agent, "--backbone", backbone, "--env", ENV_PREFIX + game_names[0], *train_args]
            try:
                resolve_config(train_parser.parse_args(argv))
            except argparse.ArgumentError as error:
                raise UsageError(f"invalid train-agent setting: {error}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        game_names = select_games(args.games)
        train_args = suite_train_arguments(args)
        validate_suite(args, game_names, train_args)
        earlier = read_earlier_runs(args.earlier_runs) if args.earlier_runs else {}
    except UsageError as error:
        parser.exit(2, f"atari100k: error: {error}\n")
    runs = build_grid(args.agents, args.backbones, [ENV_PREFIX + game for game in game_names], args.seeds,
                      args.study_dir)
    output_dir = args.output_dir or Path("benchmarks/studies") / args.study_dir.name
    statuses = [study_status(run, earlier) for run in runs]
    if args.dry_run:
        for run, status in zip(runs, statuses):
            print(f"{status:<6} {atari_game(run.env)} {run.label} seed{run.seed}  {run.run_dir}")
        return 0
    failures = 0
    if not args.aggregate_only:
        workers = args.workers or max(1, (os.cpu_count() or 1) // args.torch_threads)
        reduced = budget_shortfalls(args.total_steps, args.eval_episodes, args.max_episode_frames)
        print(f"atari100k: {len(runs)} runs: {status_counts(statuses)}; {workers} workers"
              + (f"; REDUCED budget: {'; '.join(reduced)}" if reduced else "; the Atari100k protocol budget"),
              flush=True)
        try:
            failures = run_suite([run for run, status in zip(runs, statuses) if status != "earlier"], train_args,
                                 workers, args.torch_threads)
        except ArtifactError as error:
            parser.exit(2, f"atari100k: error: {error}\n")
        except KeyboardInterrupt:
            parser.exit(130, "atari100k: interrupted; run the same command again to resume\n")
    try:
        written, markdown = write_outputs(runs, output_dir, shlex.join(["atari100k", *argv]), earlier)
    except ArtifactError as error:
        parser.exit(2, f"atari100k: error: {error}\n")
    if not written:
        print(f"atari100k: no finished runs of this suite under {args.study_dir}, so nothing to score", file=sys.stderr)
        return 1
    print(markdown)
    print(f"atari100k: wrote {', '.join(str(path) for path in written)}")
    if failures:
        print(f"atari100k: {failures} run(s) failed; run the same command again to retry them", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

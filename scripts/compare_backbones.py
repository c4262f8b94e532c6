"""`compare-backbones`: train a grid of agents x backbones x envs x seeds, then tabulate and plot it.

    compare-backbones --backbones s5 lstm none --envs memory-retention memory-rewrite --seeds 3 \\
        --study-dir runs/studies/rewrite --output-dir benchmarks/studies/rewrite

Every run is an ordinary `train-agent` run dir, `<study-dir>/<env>/<agent>__<backbone>/seed<k>`,
trained by its own `python -m agents.train ... --run-dir <dir> --quiet` process (its output goes
to `train.log` in the run dir), so a crash takes down one run only. Running the same command
again resumes the study: a run with `eval.json` is done and skipped, a run with a
`checkpoint.pt` but no `eval.json` is continued with `--resume`, any other run starts afresh.
Runs go to a local pool of `--workers` processes, or to a Ray cluster with `--ray-address`
(every Ray node needs memrl installed and the study dir on a shared filesystem). A study split
across machines (or sessions whose run dirs are gone) is aggregated whole with `--earlier-runs
<output dir>/runs.csv`: a run with no finished run dir here is taken from that file and the
`curves.csv` beside it. A curriculum trains one env first, then the others with `--init-from-env <that env>`:
each of their new runs starts from the weights of its own run (same agent, backbone and seed) on that env.

Then, per env x agent x backbone, over the seeds: final eval success and return, sample
efficiency (area under the training success-rate curve over [0, steps], divided by the
steps, so it lies in [0, 1]), POPGym's MMER (the best mean episodic return over training) and
its normalised form, steps per second, trainable parameters and peak memory, each
with its IQM and mean and 95% stratified-bootstrap intervals (`agents.scores`). Written to
the output dir: `results.csv` (one row per env x agent x backbone), `runs.csv` (one row per
run), `curves.csv` (each run's training success per 1% of its steps), `results.md` (date, commit,
command, machine and budgets; per env and agent a table over seeds and one of each run's final success;
an MMER table per env and, over several envs, a backbone x env MMER matrix) and four
plots: `learning_curves.png`, `final_success_heatmap.png`, `mmer_heatmap.png` (normalised MMER)
and `speed_vs_success.png`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib.util
import io
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium
import numpy as np
import torch

from agents import scores
from agents.run import CHECKPOINT_NAME, ArtifactError, read_json, write_atomically
from agents.train import AGENTS, CONFIG_FIELDS, EVAL_FIELDS, RunConfig, UsageError, resolve_config
from agents.train import build_parser as build_train_parser
from envs.atari import is_atari_name
from envs.registry import env_names
from memory import BACKBONES

SUCCESS_TAG = "charts/success_rate"
RETURN_TAG = "charts/episodic_return"
SMOOTHED_RETURN_TAG = "charts/episodic_return_smoothed"
MMER_SOURCES = {
    "window": "RLlib's: each training iteration's mean return over its episodes, topped up with the latest earlier "
              "ones to 100",
    "bins": "the mean over the episodes that ended in each 1% of the training steps (runs logged before memrl wrote "
            "the smoothed return)",
}
"""How a run's MMER was read: from `SMOOTHED_RETURN_TAG`, or (older logs without it) from RETURN_TAG in 1% bins."""
CURVE_POINTS = 101
"""Points of the common step grid, 0 to the run's steps, that learning curves are put on."""
GRID_FLAGS = ("agent", "backbone", "env", "seed", "torch_threads")
"""train-agent settings the study sets itself; --train-arg may not override them."""
PLOT_NAMES = (
    "learning_curves.png", "final_success_heatmap.png", "mmer_heatmap.png", "speed_vs_success.png"
)
METRICS = {"success": "success_rate", "return": "return_mean", "auc": "auc", "mmer": "mmer", "mmer_normalised": "mmer_normalised"}
"""Per-seed scores summarised with IQM and mean and their bootstrap intervals: name -> runs.csv column."""


@dataclass(frozen=True)
class GridRun:
    """One cell of the study: a train-agent run of `agent` + `backbone` on `env` with `seed`."""

    env: str
    agent: str
    backbone: str
    seed: int
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.agent}__{self.backbone}"


def grid_run_dir(study_dir: Path, env: str, agent: str, backbone: str, seed: int) -> Path:
    """`<study-dir>/<env>/<agent>__<backbone>/seed<k>`."""
    return study_dir / env.replace("/", "_") / f"{agent}__{backbone}" / f"seed{seed}"


def build_grid(agents: list[str], backbones: list[str], envs: list[str], seeds: int, study_dir: Path) -> list[GridRun]:
    """Every env x agent x backbone x seed (seeds 1..`seeds`), in that nesting order."""
    return [
        GridRun(env, agent, backbone, seed, grid_run_dir(study_dir, env, agent, backbone, seed))
        for env in envs for agent in agents for backbone in backbones for seed in range(1, seeds + 1)
    ]


def run_status(run_dir: Path) -> str:
    """The run's status: done (eval.json written), resume (a checkpoint but no eval.json) or new."""
    if (run_dir / "eval.json").exists():
        return "done"
    if (run_dir / CHECKPOINT_NAME).exists():
        return "resume"
    return "new"


def study_status(run: GridRun, earlier: dict[tuple[str, str, str, int], dict]) -> str:
    """run_status, or "earlier" for a run not finished here whose record --earlier-runs holds
    (finished on another machine: it is not trained again)."""
    status = run_status(run.run_dir)
    return "earlier" if status != "done" and (run.env, run.agent, run.backbone, run.seed) in earlier else status


def status_counts(statuses: list[str]) -> str:
    """"N new, N to resume, N done" and, where there are any, "N from --earlier-runs"."""
    counts = f"{statuses.count('new')} new, {statuses.count('resume')} to resume, {statuses.count('done')} done"
    return counts + (f", {statuses.count('earlier')} from --earlier-runs" if "earlier" in statuses else "")


def curriculum_source(run: GridRun, env: str) -> Path:
    """The run dir of the same agent, backbone and seed on `env` in the same study dir."""
    return grid_run_dir(run.run_dir.parents[2], env, run.agent, run.backbone, run.seed)


def train_agent_arguments(run: GridRun, train_args: list[str], resume: bool, init_from_env: str | None = None
                          ) -> list[str]:
    """The train-agent flags of one run (on --resume train-agent reads the config from the
    checkpoint and honours only --total-steps); a new run with `init_from_env` starts from the weights
    of its curriculum source."""
    arguments = ["--agent", run.agent, "--backbone", run.backbone, "--env", run.env, "--seed", str(run.seed),
                 "--run-dir", str(run.run_dir), "--quiet", *train_args]
    if resume:
        return [*arguments, "--resume"]
    return [*arguments, "--init-from", str(curriculum_source(run, init_from_env))] if init_from_env else arguments


def check_curriculum_sources(runs: list[GridRun], init_from_env: str) -> None:
    """Refuse, in one sentence, a study whose new runs would start from a run on `init_from_env` that has not
    finished."""
    for run in runs:
        source = curriculum_source(run, init_from_env)
        if run_status(run.run_dir) == "new" and not (source / "eval.json").exists():
            raise UsageError(f"--init-from-env {init_from_env}: {source} is not a finished run (no eval.json); "
                             f"train {init_from_env} with the same agents, backbones and seeds in this study dir first")


def execute(arguments: list[str], log_path: str, torch_threads: int) -> tuple[int, float]:
    """Run `python -m agents.train ARGUMENTS` with this machine's Python, its output appended to
    `log_path`; returns (exit code, seconds)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "agents.train", *arguments]
    started = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        environment = {**os.environ, "OMP_NUM_THREADS": str(torch_threads)}
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                    check=False).returncode
    return returncode, time.perf_counter() - started


def report(position: int, total: int, run: GridRun, returncode: int, seconds: float) -> bool:
    """Print the one status line of a finished run; True when it left an eval.json."""
    name = f"[{position}/{total}] {run.env} {run.label} seed{run.seed}"
    eval_path = run.run_dir / "eval.json"
    if returncode == 0 and eval_path.exists():
        shown = ("success_rate", "return_mean", "global_step", "train_wall_time_seconds")
        evaluation = read_json(eval_path, {name: EVAL_FIELDS[name] for name in shown})
        sps = evaluation["global_step"] / max(evaluation["train_wall_time_seconds"], 1e-9)
        print(f"compare-backbones: {name}: success {evaluation['success_rate']:.3f}, "
              f"return {evaluation['return_mean']:.3f}, {sps:,.0f} SPS, {seconds:.0f} s", flush=True)
        return True
    print(f"compare-backbones: {name}: FAILED (exit {returncode}); see {run.run_dir / 'train.log'}", flush=True)
    return False


def run_grid(runs: list[GridRun], train_args: list[str], workers: int, torch_threads: int,
             ray_address: str | None = None, ray_gpus_per_run: float = 0.0, init_from_env: str | None = None) -> int:
    """Train every run that is not done (resuming those with a checkpoint; a new one from its run on
    `init_from_env` when given); returns the number that failed."""
    jobs = []
    for run in runs:
        status = run_status(run.run_dir)
        if status != "done":
            arguments = train_agent_arguments(run, train_args, resume=status == "resume", init_from_env=init_from_env)
            jobs.append((run, arguments, str(run.run_dir / "train.log")))
    if ray_address is not None:
        finished = _finish_with_ray(jobs, torch_threads, ray_gpus_per_run, ray_address)
    else:
        finished = _finish_locally(jobs, workers, torch_threads)
    failures = 0
    for position, (run, returncode, seconds) in enumerate(finished, start=1):
        failures += not report(position, len(jobs), run, returncode, seconds)
    return failures


def _finish_locally(jobs, workers: int, torch_threads: int):
    """Yield (run, exit code, seconds) as runs finish; each run is its own process, a thread waits on it."""
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {executor.submit(execute, arguments, log_path, torch_threads): run
                   for run, arguments, log_path in jobs}
        for future in as_completed(futures):
            yield (futures[future], *future.result())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _finish_with_ray(jobs, torch_threads: int, gpus_per_run: float, ray_address: str):
    """Yield (run, exit code, seconds) as Ray tasks finish; each task runs the same command as the local pool.

    Ray hides every GPU from a task that reserves none, so GPU runs need `gpus_per_run` > 0
    (a fraction packs several runs on one GPU)."""
    import ray

    try:
        ray.init(address=ray_address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UsageError(f"cannot connect to the Ray cluster at {ray_address!r}: {error}") from None
    remote_execute = ray.remote(num_cpus=torch_threads, num_gpus=gpus_per_run)(execute)
    references = {remote_execute.remote(arguments, log_path, torch_threads): run for run, arguments, log_path in jobs}
    waiting = list(references)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        try:
            returncode, seconds = ray.get(done[0])
        except ray.exceptions.RayError:
            returncode, seconds = -1, 0.0
        yield references[done[0]], returncode, seconds


# -- aggregation -----------------------------------------------------------------------------


def read_curves(run_dir: Path, tags: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(steps, values) of every scalar of each tag in the run's tensorboard logs, read in one pass
    (empty arrays for a tag the logs lack)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    logged = accumulator.Tags()["scalars"]
    curves = {}
    for tag in tags:
        events = accumulator.Scalars(tag) if tag in logged else []
        curves[tag] = (np.array([event.step for event in events], dtype=np.float64),
                       np.array([event.value for event in events], dtype=np.float64))
    return curves


def binned_means(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centres, means) of the cells of an increasing step grid that hold logged values: the mean of
    the values logged inside each such cell, and the cell's centre."""
    cells = np.clip(np.digitize(steps, grid) - 1, 0, grid.size - 2)
    counts = np.bincount(cells, minlength=grid.size - 1)
    sums = np.bincount(cells, weights=values, minlength=grid.size - 1)
    filled = counts > 0
    return ((grid[:-1] + grid[1:]) / 2)[filled], sums[filled] / counts[filled]


def curve_on_grid(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A logged curve on an increasing step grid: the values logged inside each grid cell are
    averaged, placed at the cell's centre and linearly interpolated between centres (held
    constant before the first and after the last cell with data). All NaN without data."""
    if steps.size == 0:
        return np.full(grid.shape, np.nan)
    return np.interp(grid, *binned_means(steps, values, grid))


def normalised_auc(curve: np.ndarray) -> float:
    """Trapezoid area under a curve on an evenly spaced grid, divided by the grid's span."""
    return float(np.mean((curve[1:] + curve[:-1]) / 2))


def max_mean_episodic_return(steps: np.ndarray, returns: np.ndarray, total_steps: float) -> float:
    """MMER from the per-step episode means of RETURN_TAG: the maximum over training of the mean over
    the episodes logged in each 1% of the training steps (the learning-curve cells). NaN if no episode ended."""
    if steps.size == 0:
        return float("nan")
    return float(binned_means(steps, returns, np.linspace(0, total_steps, CURVE_POINTS))[1].max())


def run_mmer(curves: dict[str, tuple[np.ndarray, np.ndarray]], total_steps: float) -> tuple[float, str]:
    """POPGym's MMER of one run from its `read_curves` of SMOOTHED_RETURN_TAG and RETURN_TAG, and its
    MMER_SOURCES key: the maximum of the smoothed return that memrl logs once per training iteration
    (RLlib's `episode_reward_mean`, which POPGym reads), or for logs written before that tag existed,
    `max_mean_episodic_return` of the per-step means."""
    steps, smoothed = curves[SMOOTHED_RETURN_TAG]
    if steps.size:
        return float(smoothed.max()), "window"
    return max_mean_episodic_return(*curves[RETURN_TAG], total_steps), "bins"


def normalised_mmer(mmer: float) -> float:
    """POPGym's normalised score, 0.5 * MMER + 0.5: maps its [-1, 1] returns to [0, 1]."""
    return 0.5 * mmer + 0.5


def load_run(run: GridRun) -> dict | None:
    """One finished run's row for runs.csv plus its success curve; None if it has no eval.json."""
    if run_status(run.run_dir) != "done":
        return None
    evaluation = read_json(run.run_dir / "eval.json", EVAL_FIELDS)
    config = read_json(run.run_dir / "config.json", CONFIG_FIELDS)
    curves = read_curves(run.run_dir, (SUCCESS_TAG, SMOOTHED_RETURN_TAG, RETURN_TAG))
    steps, values = curves[SUCCESS_TAG]
    total_steps = evaluation["global_step"]
    curve = curve_on_grid(steps, values, np.linspace(0, total_steps, CURVE_POINTS))
    mmer, mmer_source = run_mmer(curves, total_steps)
    return {
        "env": run.env, "agent": run.agent, "backbone": run.backbone, "seed": run.seed, "run_dir": str(run.run_dir),
        "success_rate": evaluation["success_rate"], "return_mean": evaluation["return_mean"],
        "return_std": evaluation["return_std"], "auc": normalised_auc(curve),
        "mmer": mmer, "mmer_normalised": normalised_mmer(mmer), "mmer_source": mmer_source,
        "sps": total_steps / max(evaluation["train_wall_time_seconds"], 1e-9),
        "parameters": evaluation.get("parameters", np.nan), "peak_memory_mb": evaluation.get("peak_memory_mb", np.nan),
        "global_step": total_steps, "train_wall_time_seconds": evaluation["train_wall_time_seconds"],
        "eval_episodes": evaluation["episodes"], "preset": config["preset"], "num_envs": config["run"]["num_envs"],
        "curve_steps": steps, "curve_values": values,
    }


RUN_COLUMNS = {"env": str, "agent": str, "backbone": str, "seed": int, "run_dir": str, "success_rate": float,
               "return_mean": float, "return_std": float, "auc": float, "mmer": float, "mmer_normalised": float,
               "mmer_source": str, "sps": float, "parameters": float, "peak_memory_mb": float, "global_step": int,
               "train_wall_time_seconds": float, "eval_episodes": int, "preset": str, "num_envs": int}
"""runs.csv's columns with their types (an empty cell is a NaN float); mmer_source is a MMER_SOURCES key
(an older runs.csv without that column is read as "bins", the only way MMER was read then)."""
CURVE_COLUMNS = {"env": str, "agent": str, "backbone": str, "seed": int, "step": float, "success": float}
"""curves.csv's columns: a run's training success rate averaged over each 1% of its steps, at the cell's centre."""


def run_key(record: dict) -> tuple[str, str, str, int]:
    return record["env"], record["agent"], record["backbone"], record["seed"]


def _typed_rows(path: Path, columns: dict, defaults: dict[str, str] | None = None) -> list[dict]:
    """The rows of a CSV this script wrote, typed by `columns` (a column in `defaults` that an older file
    lacks takes its default); one sentence for what is wrong."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise UsageError(f"--earlier-runs needs {path}, which cannot be read ({error.strerror}); give the runs.csv "
                         "of an earlier compare-backbones output dir, with its curves.csv beside it") from None
    typed = []
    for line, row in enumerate(rows, start=2):
        row = {**(defaults or {}), **row}
        missing = [name for name in columns if row.get(name) is None]
        if missing:
            raise UsageError(f"{path} has no {missing[0]!r} column; give files compare-backbones wrote")
        try:
            typed.append({name: (float(row[name]) if row[name] else np.nan) if kind is float else kind(row[name])
                          for name, kind in columns.items()})
        except ValueError:
            raise UsageError(f"{path} line {line} has a value that is not a number where one is needed; "
                             "give files compare-backbones wrote") from None
    return typed


def read_earlier_runs(runs_path: Path) -> dict[tuple[str, str, str, int], dict]:
    """The records of an earlier output dir's runs.csv, with their success curves from the curves.csv
    beside it, keyed by (env, agent, backbone, seed)."""
    records = {run_key(record): record for record in _typed_rows(runs_path, RUN_COLUMNS, {"mmer_source": "bins"})}
    curves: dict[tuple[str, str, str, int], list[tuple[float, float]]] = {key: [] for key in records}
    for point in _typed_rows(runs_path.parent / "curves.csv", CURVE_COLUMNS):
        curves.setdefault(run_key(point), []).append((point["step"], point["success"]))
    for key, record in records.items():
        points = np.array(curves[key], dtype=np.float64).reshape(-1, 2)
        record["curve_steps"], record["curve_values"] = points[:, 0], points[:, 1]
    return records


def collect_records(runs: list[GridRun], earlier: dict[tuple[str, str, str, int], dict],
                    load: Callable[[GridRun], dict | None] | None = None) -> tuple[list[dict], int]:
    """Each run's record from its finished run dir (read by `load`, default load_run), else from the
    earlier runs, keyed by (env, agent, backbone, seed); also how many came from there."""
    records, from_earlier = [], 0
    for run in runs:
        record = (load or load_run)(run)
        if record is None:
            record = earlier.get((run.env, run.agent, run.backbone, run.seed))
            from_earlier += record is not None
        if record is not None:
            records.append(record)
    return records, from_earlier


def curve_rows(records: list[dict]) -> list[dict]:
    """curves.csv: per run, its training success averaged over each 1% of its steps (cells with data)."""
    rows = []
    for record in records:
        grid = np.linspace(0, record["global_step"], CURVE_POINTS)
        if record["curve_steps"].size == 0:
            continue
        for step, success in zip(*binned_means(record["curve_steps"], record["curve_values"], grid)):
            rows.append({"env": record["env"], "agent": record["agent"], "backbone": record["backbone"],
                         "seed": record["seed"], "step": float(step), "success": float(success)})
    return rows


def summarise_seeds(values: np.ndarray) -> dict[str, float]:
    """IQM and mean over the finite per-seed scores, each with its 95% stratified-bootstrap interval."""
    finite = values[np.isfinite(values)]
    summary = {}
    for name, aggregate in (("iqm", scores.interquartile_mean), ("mean", scores.mean)):
        if finite.size == 0:
            summary.update({name: np.nan, f"{name}_low": np.nan, f"{name}_high": np.nan})
            continue
        summary[name] = aggregate(finite)
        summary[f"{name}_low"], summary[f"{name}_high"] = scores.stratified_bootstrap_ci(finite, aggregate)
    return summary


def aggregate(records: list[dict]) -> list[dict]:
    """One results.csv row per env x agent x backbone, in the order the records come."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["env"], record["agent"], record["backbone"]), []).append(record)
    rows = []
    for (env, agent, backbone), group in groups.items():
        row = {"env": env, "agent": agent, "backbone": backbone, "seeds": len(group)}
        for name, column in METRICS.items():
            summary = summarise_seeds(np.array([record[column] for record in group], dtype=np.float64))
            row.update({f"{name}_{key}": value for key, value in summary.items()})
        for column in ("sps", "parameters", "peak_memory_mb", "global_step"):
            row[column] = float(np.mean([record[column] for record in group]))
        rows.append(row)
    return rows


# -- outputs ---------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Rows as CSV (whole floats as integers, others to 6 significant digits, NaN left empty), written
    atomically; the columns are the first row's keys unless given."""
    def cell(value):
        if not isinstance(value, float):
            return value
        if np.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else f"{value:.6g}"

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: cell(value) for key, value in row.items()} for row in rows)
    write_atomically(path, buffer.getvalue().encode())


def git_commit() -> str:
    repository = Path(__file__).resolve().parents[1]
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repository, capture_output=True,
                                text=True, check=False)
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__}, {platform.system()}"


def _interval(row: dict, name: str, digits: int = 3) -> str:
    if np.isnan(row[name]):
        return "—"
    return f"{row[name]:.{digits}f} [{row[f'{name}_low']:.{digits}f}, {row[f'{name}_high']:.{digits}f}]"


def _count(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:,.0f}"


def _distinct(records: list[dict], column: str) -> str:
    values = sorted({record[column] for record in records}, key=str)
    return "/".join(f"{value:,}" if isinstance(value, int) else str(value) for value in values)


def results_markdown(rows: list[dict], records: list[dict], runs: list[GridRun], command: str,
                     from_earlier: int = 0) -> str:
    """results.md: provenance header, then one table per env and agent."""
    lines = [
        "# Backbone comparison",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {git_commit()}",
        f"- command: `{command}`",
        f"- machine (where this was written): {describe_machine()}",
        f"- runs finished: {len(records)} of {len(runs)}",
        *([f"- {from_earlier} of them aggregated from --earlier-runs (trained on an earlier machine; their run "
           "dirs are not here)"] if from_earlier else []),
    ]
    for env in dict.fromkeys(record["env"] for record in records):
        env_records = [record for record in records if record["env"] == env]
        lines.append(f"- budget on {env}: {_distinct(env_records, 'global_step')} env steps per run, "
                     f"preset {_distinct(env_records, 'preset')}, {_distinct(env_records, 'num_envs')} envs, "
                     f"eval over {_distinct(env_records, 'eval_episodes')} episodes")
    lines += [
        "",
        ("Over seeds: interquartile mean (IQM) and mean with 95% stratified-bootstrap intervals. "
         "Success and return are the final evaluation; AUC is the area under the training "
         "success-rate curve divided by the steps (1 = solved from the first step); SPS = env steps / "
         "training wall time; peak MB is CUDA memory allocated on a GPU, else the process's peak RSS."),
    ]
    for env, agent in dict.fromkeys((row["env"], row["agent"]) for row in rows):
        lines += ["", f"## {env} — {agent}", "",
                  ("| backbone | seeds | success IQM [95% CI] | success mean [95% CI] | return mean [95% CI] "
                   "| AUC IQM [95% CI] | SPS | params | peak MB |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            if (row["env"], row["agent"]) == (env, agent):
                lines.append(
                    f"| {row['backbone']} | {row['seeds']} | {_interval(row, 'success_iqm')} | "
                    f"{_interval(row, 'success_mean')} | {_interval(row, 'return_mean')} | {_interval(row, 'auc_iqm')} | "
                    f"{_count(row['sps'])} | {_count(row['parameters'])} | {_count(row['peak_memory_mb'])} |"
                )
        lines += seed_success_markdown([record for record in records
                                        if (record["env"], record["agent"]) == (env, agent)])
    return "\n".join(lines + mmer_markdown(rows, records)) + "\n"


def seed_success_markdown(records: list[dict]) -> list[str]:
    """Each run's final success, a row per backbone and a column per seed (— for a run not finished)."""
    seeds = sorted({record["seed"] for record in records})
    success = {(record["backbone"], record["seed"]): record["success_rate"] for record in records}
    lines = ["", "Final success of each run:", "",
             "| backbone | " + " | ".join(f"seed {seed}" for seed in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for backbone in dict.fromkeys(record["backbone"] for record in records):
        cells = [f"{success[backbone, seed]:.3f}" if (backbone, seed) in success else "—" for seed in seeds]
        lines.append(f"| {backbone} | " + " | ".join(cells) + " |")
    return lines


def mmer_markdown(rows: list[dict], records: list[dict]) -> list[str]:
    """results.md's MMER section: how each run's MMER was read, then per env and, over the envs, the
    mean of each backbone's normalised MMER."""
    sources = [record["mmer_source"] for record in records]
    read_as = "; ".join(f"for {sources.count(key)} of the {len(sources)} runs as {description}"
                        for key, description in MMER_SOURCES.items() if key in sources)
    lines = ["", "## MMER (POPGym's score)", "",
             (f"MMER: the maximum over training of the mean episodic return, {read_as}; normalised = "
              "0.5 * MMER + 0.5 (POPGym, Morad et al. 2023). Mean over seeds [95% CI]."), "",
             "| env | agent | backbone | MMER | normalised MMER |", "|---|---|---|---:|---:|"]
    lines += [f"| {row['env']} | {row['agent']} | {row['backbone']} | {_interval(row, 'mmer_mean')} | "
              f"{_interval(row, 'mmer_normalised_mean')} |" for row in rows]
    envs = list(dict.fromkeys(row["env"] for row in rows))
    if len(envs) > 1:
        lines += ["", (f"MMER by env (mean over seeds), and normalised MMER averaged over the {len(envs)} envs "
                       "(— where a backbone has not finished every env):"), "",
                  "| agent | backbone | " + " | ".join(envs) + " | mean normalised MMER |",
                  "|---|---|" + "---:|" * (len(envs) + 1)]
        for agent, backbone in dict.fromkeys((row["agent"], row["backbone"]) for row in rows):
            by_env = {row["env"]: row for row in rows if (row["agent"], row["backbone"]) == (agent, backbone)}
            cells = ["—" if env not in by_env or np.isnan(by_env[env]["mmer_mean"]) else f"{by_env[env]['mmer_mean']:.3f}"
                     for env in envs]
            normalised = [by_env[env]["mmer_normalised_mean"] for env in envs if env in by_env]
            mean = f"{np.mean(normalised):.3f}" if len(normalised) == len(envs) and np.isfinite(normalised).all() else "—"
            lines.append(f"| {agent} | {backbone} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def row_label(row: dict, several_agents: bool) -> str:
    """A results row's name in tables and plots: its backbone, prefixed by its agent when agents differ."""
    return f"{row['agent']} + {row['backbone']}" if several_agents else row["backbone"]


def _save_figure(figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomically(path, buffer.getvalue())


def plot_learning_curves(rows: list[dict], records: list[dict], path: Path) -> None:
    """One panel per env: mean training success over seeds vs env steps, 95% bootstrap band."""
    from matplotlib.figure import Figure

    envs = list(dict.fromkeys(row["env"] for row in rows))
    several_agents = len({row["agent"] for row in rows}) > 1
    figure = Figure(figsize=(5 * len(envs), 3.8), layout="constrained")
    axes = figure.subplots(1, len(envs), squeeze=False, sharey=True)[0]
    for axis, env in zip(axes, envs):
        for row in (row for row in rows if row["env"] == env):
            group = [record for record in records
                     if (record["env"], record["agent"], record["backbone"]) == (env, row["agent"], row["backbone"])]
            grid = np.linspace(0, max(record["global_step"] for record in group), CURVE_POINTS)
            curves = np.stack([curve_on_grid(record["curve_steps"], record["curve_values"], grid) for record in group])
            curves = curves[np.isfinite(curves).all(axis=1)]
            if curves.size == 0:
                continue
            band = np.array([scores.stratified_bootstrap_ci(curves[:, point], scores.mean, num_resamples=500)
                             for point in range(CURVE_POINTS)])
            line, = axis.plot(grid, curves.mean(axis=0), label=row_label(row, several_agents))
            axis.fill_between(grid, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.2, linewidth=0)
        axis.set(title=env, xlabel="env steps", ylim=(-0.02, 1.02))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    axes[0].set_ylabel("training success rate")
    _save_figure(figure, path)


def plot_heatmap(rows: list[dict], path: Path, column: str, label: str) -> None:
    """Backbone x env grid of one results.csv column in [0, 1] (e.g. success IQM over seeds), annotated."""
    from matplotlib.figure import Figure

    envs = list(dict.fromkeys(row["env"] for row in rows))
    several_agents = len({row["agent"] for row in rows}) > 1
    labels = list(dict.fromkeys(row_label(row, several_agents) for row in rows))
    values = np.full((len(labels), len(envs)), np.nan)
    for row in rows:
        values[labels.index(row_label(row, several_agents)), envs.index(row["env"])] = row[column]
    figure = Figure(figsize=(1.6 * len(envs) + 2.5, 0.45 * len(labels) + 1.5), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(envs)), envs, rotation=20, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    for (label_index, env_index), value in np.ndenumerate(values):
        axis.text(env_index, label_index, "—" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                  color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axis, label=label)
    _save_figure(figure, path)


def plot_speed_vs_success(rows: list[dict], path: Path) -> None:
    """SPS (log scale) against final success: a marker per backbone, a colour per env, IQM interval as error bar."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    envs = list(dict.fromkeys(row["env"] for row in rows))
    several_agents = len({row["agent"] for row in rows}) > 1
    labels = list(dict.fromkeys(row_label(row, several_agents) for row in rows))
    markers = "osD^vP*Xh<>p"
    colours = [f"C{index % 10}" for index in range(len(envs))]
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.subplots()
    for row in rows:
        marker = markers[labels.index(row_label(row, several_agents)) % len(markers)]
        colour = colours[envs.index(row["env"])]
        error = [[row["success_iqm"] - row["success_iqm_low"]], [row["success_iqm_high"] - row["success_iqm"]]]
        axis.errorbar(row["sps"], row["success_iqm"], yerr=error, fmt=marker, color=colour, markersize=7, capsize=3)
    handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=env) for env, colour in zip(envs, colours)]
    handles += [Line2D([], [], color="grey", marker=markers[index % len(markers)], linestyle="", label=label)
                for index, label in enumerate(labels)]
    speeds = [row["sps"] for row in rows]
    axis.set(xscale="log", xlabel="env steps per second (training)", ylabel="final success (IQM over seeds)",
             xlim=(min(speeds) / 1.5, max(speeds) * 1.5), ylim=(-0.05, 1.05))
    axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.grid(alpha=0.3, which="both")
    axis.legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save_figure(figure, path)


def write_outputs(runs: list[GridRun], output_dir: Path, command: str,
                  earlier: dict[tuple[str, str, str, int], dict] | None = None) -> list[Path]:
    """Aggregate the finished runs of the grid (and the earlier runs' records of the rest) into the
    output dir; returns the files written."""
    records, from_earlier = collect_records(runs, earlier or {})
    if not records:
        return []
    rows = aggregate(records)
    run_rows = [{name: record[name] for name in RUN_COLUMNS} for record in records]
    written = [output_dir / "results.csv", output_dir / "runs.csv", output_dir / "curves.csv", output_dir / "results.md"]
    write_csv(written[0], rows)
    write_csv(written[1], run_rows)
    write_csv(written[2], curve_rows(records), list(CURVE_COLUMNS))
    write_atomically(written[3], results_markdown(rows, records, runs, command, from_earlier).encode())
    if importlib.util.find_spec("matplotlib") is not None:
        curves_path, heatmap_path, mmer_path, scatter_path = (output_dir / name for name in PLOT_NAMES)
        plot_learning_curves(rows, records, curves_path)
        plot_heatmap(rows, heatmap_path, "success_iqm", "final success (IQM over seeds)")
        plot_heatmap(rows, mmer_path, "mmer_normalised_mean", "normalised MMER (mean over seeds)")
        plot_speed_vs_success(rows, scatter_path)
        written += [curves_path, heatmap_path, mmer_path, scatter_path]
    return written


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare-backbones",
        description="Train agents x backbones x envs x seeds with train-agent, then tabulate and plot the results.",
    )
    parser.add_argument("--agents", nargs="+", default=["ppo"], help=f"agents: {', '.join(AGENTS)} (default ppo)")
    parser.add_argument("--backbones", nargs="+", default=["all"],
                        help=f"backbones, or all: {', '.join(BACKBONES)} (default all)")
    parser.add_argument("--envs", nargs="+", default=["memory-retention", "memory-rewrite"],
                        help="env short names or gymnasium ids (default memory-retention memory-rewrite)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell, 1..SEEDS (default 3)")
    parser.add_argument("--study-dir", type=Path, default=Path("runs/studies/backbones"),
                        help="run dirs go to STUDY_DIR/<env>/<agent>__<backbone>/seed<k> (default runs/studies/backbones)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="tables and plots (default benchmarks/studies/<name of the study dir>)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs at once in the local pool (default CPU cores // --torch-threads)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads of each run (default 1)")
    parser.add_argument("--ray-address", default=None,
                        help="run through Ray tasks on this cluster (e.g. auto) instead of the local pool")
    parser.add_argument("--ray-gpus-per-run", type=float, default=0.0,
                        help="GPUs each Ray task reserves; Ray hides GPUs from tasks that reserve none, "
                             "0.25 packs 4 runs per GPU (default 0)")
    for name in ("total-steps", "preset", "device", "eval-episodes"):
        parser.add_argument(f"--{name}", type=int if name in ("total-steps", "eval-episodes") else str, default=None,
                            help=f"train-agent --{name} of every run (default: train-agent's)")
    parser.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="any other train-agent setting for every run, e.g. num_envs=16 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid with each run's status and exit")
    parser.add_argument("--aggregate-only", action="store_true", help="skip training; aggregate the finished runs")
    parser.add_argument("--init-from-env", default=None, metavar="ENV",
                        help="a curriculum: start every new run from the weights of the finished run of the same "
                             "agent, backbone and seed on ENV in --study-dir (train-agent --init-from), e.g. the "
                             "passive T-maze at L = 100, then at L = 500; ENV is trained first, by its own "
                             "compare-backbones call")
    parser.add_argument("--earlier-runs", type=Path, default=None,
                        help="the runs.csv of an earlier output dir (its curves.csv beside it): a run with no "
                             "finished run dir under --study-dir is aggregated from there (a study split across machines)")
    return parser


def _setting_defaults() -> dict:
    """train-agent setting name -> default, for RunConfig and every agent's config."""
    defaults = {}
    for config_class in (RunConfig, *(config for config, _ in AGENTS.values())):
        for config_field in dataclasses.fields(config_class):
            default = config_field.default
            defaults.setdefault(config_field.name,
                                config_field.default_factory() if default is dataclasses.MISSING else default)
    return defaults


def train_arguments(args: argparse.Namespace) -> list[str]:
    """The train-agent flags every run gets: the pass-through options, then each --train-arg."""
    arguments = ["--torch-threads", str(args.torch_threads)]
    for name in ("total_steps", "preset", "device", "eval_episodes"):
        if getattr(args, name) is not None:
            arguments += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    defaults = _setting_defaults()
    for pair in args.train_arg:
        key, separator, value = pair.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not separator or name not in defaults:
            raise UsageError(f"--train-arg {pair!r} must be KEY=VALUE with KEY a train-agent setting "
                             "(see train-agent --help)")
        if name in GRID_FLAGS:
            raise UsageError(f"--train-arg {pair!r} sets {name}, which the study sets itself "
                             "(--agents, --backbones, --envs, --seeds, --torch-threads)")
        flag = "--" + name.replace("_", "-")
        if isinstance(defaults[name], bool):
            if value.lower() not in ("true", "false"):
                raise UsageError(f"--train-arg {pair!r}: {name} is true or false")
            arguments.append(flag if value.lower() == "true" else f"--no-{flag[2:]}")
        else:
            arguments += [flag, value]
    return arguments


def validate_study(args: argparse.Namespace, backbones: list[str], train_args: list[str]) -> None:
    """Refuse bad names and budgets before any run starts, each in one sentence."""
    for agent in args.agents:
        if agent not in AGENTS:
            raise UsageError(f"unknown agent {agent!r}; choose from: {', '.join(AGENTS)}")
    for backbone in backbones:
        if backbone not in BACKBONES:
            raise UsageError(f"unknown backbone {backbone!r}; choose from: all, {', '.join(BACKBONES)}")
    for env in args.envs:
        if not is_atari_name(env) and env not in env_names() and env not in gymnasium.registry:
            raise UsageError(f"unknown env {env!r}; choose a memrl env ({', '.join(env_names())}) "
                             "or a registered gymnasium id")
    for name in ("seeds", "torch_threads") + (("workers",) if args.workers is not None else ()):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
    if args.ray_gpus_per_run < 0:
        raise UsageError(f"--ray-gpus-per-run must be 0 or more, got {args.ray_gpus_per_run}")
    if args.init_from_env is not None and args.init_from_env in args.envs:
        raise UsageError(f"--init-from-env {args.init_from_env} is also in --envs; train it first, by its own "
                         "compare-backbones call, then start the other envs from it")
    train_parser = build_train_parser()
    train_parser.exit_on_error = False
    for agent in args.agents:
        for backbone in backbones:
            for env in args.envs:
                argv = ["--agent", agent, "--backbone", backbone, "--env", env, *train_args]
                try:
                    run_config, _, _ = resolve_config(train_parser.parse_args(argv))
                except argparse.ArgumentError as error:
                    raise UsageError(f"invalid train-agent setting: {error}") from None
                if run_config.eval_episodes < 1:
                    raise UsageError("the study compares final evaluations, so --eval-episodes must be 1 or more")
    if args.ray_address is not None and importlib.util.find_spec("ray") is None:
        raise UsageError("--ray-address needs Ray, which is not installed: pip install ray (or memrl's ray extra)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    backbones = list(BACKBONES) if args.backbones == ["all"] else args.backbones
    try:
        train_args = train_arguments(args)
        validate_study(args, backbones, train_args)
        earlier = read_earlier_runs(args.earlier_runs) if args.earlier_runs else {}
    except UsageError as error:
        parser.exit(2, f"compare-backbones: error: {error}\n")
    runs = build_grid(args.agents, backbones, args.envs, args.seeds, args.study_dir)
    output_dir = args.output_dir or Path("benchmarks/studies") / args.study_dir.name
    statuses = [study_status(run, earlier) for run in runs]
    if args.dry_run:
        for run, status in zip(runs, statuses):
            print(f"{status:<6} {run.env} {run.label} seed{run.seed}  {run.run_dir}")
        return 0
    failures = 0
    if not args.aggregate_only:
        workers = args.workers or max(1, (os.cpu_count() or 1) // args.torch_threads)
        where = f"Ray at {args.ray_address}" if args.ray_address else f"{workers} workers"
        print(f"compare-backbones: {len(runs)} runs: {status_counts(statuses)}; {where}, "
              f"{args.torch_threads} torch thread(s) each", flush=True)
        to_train = [run for run, status in zip(runs, statuses) if status != "earlier"]
        try:
            if args.init_from_env is not None:
                check_curriculum_sources(to_train, args.init_from_env)
            failures = run_grid(to_train, train_args, workers, args.torch_threads, args.ray_address,
                                args.ray_gpus_per_run, args.init_from_env)
        except (UsageError, ArtifactError) as error:
            parser.exit(2, f"compare-backbones: error: {error}\n")
        except KeyboardInterrupt:
            parser.exit(130, "compare-backbones: interrupted; run the same command again to resume\n")
    if importlib.util.find_spec("matplotlib") is None:
        print("compare-backbones: matplotlib is not installed, so no plots are drawn "
              "(pip install matplotlib, or memrl's plots extra)", file=sys.stderr)
    try:
        written = write_outputs(runs, output_dir, shlex.join(["compare-backbones", *argv]), earlier)
    except ArtifactError as error:
        parser.exit(2, f"compare-backbones: error: {error}\n")
    if not written:
        print(f"compare-backbones: no finished runs of this grid under {args.study_dir}, so nothing to aggregate",
              file=sys.stderr)
        return 1
    print(f"compare-backbones: wrote {', '.join(str(path) for path in written)}")
    if failures:
        print(f"compare-backbones: {failures} run(s) failed; run the same command again to retry them", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

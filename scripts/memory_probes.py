"""Linear probes of a trained agent's memory: what does its recurrent state still know about the cues?

    python -m scripts.memory_probes runs/memory-retention__ppo__*__1__* --out-dir probes/retention
    python -m scripts.memory_probes runs/memory-rewrite__ppo__s5__1__* runs/memory-rewrite__ppo__gru__1__* \
        --out-dir probes/rewrite --episodes 1024
    python -m scripts.memory_probes runs/popgym-repeat-previous-medium__ppo__s4__1__* --out-dir probes/rp --k-step 4

For each `train-agent` run dir (PPO or Dreamer, on a T-maze, an Endless T-Maze or a POPGym card
sequence: RepeatPrevious, RepeatFirst) the agent is rebuilt from `checkpoint.pt` and plays
`--episodes` episodes greedily in one batched env (each env's first episode counts). After the
agent reads observation t, its recurrent state (every tensor of the state dict flattened into one
feature vector, complex as real and imaginary parts) is recorded with ground-truth labels read
from the env (`memory_labels()`: the current corridor's cue and index; never part of an
observation). A probe is a logistic regression
(full-batch L-BFGS, L2, standardised features) fitted on the first `--train-fraction` of the
episodes and scored on the others; its L2 coefficient is the one of `--l2` that does best on the
last quarter of the train episodes. Probes, for k = 0 .. `--max-k` (default the corridor length):

- retention: the cue shown k steps ago, i.e. the current corridor's cue at the step k steps
  after it was shown: how long memory lasts;
- current / superseded (Endless T-Maze, corridors after the first): the current corridor's cue
  and the previous corridor's cue, k steps after the current cue was shown: a backbone that
  rewrites its memory loses the superseded cue, one that accumulates keeps it. (PPO's memory
  reads observations only; Dreamer's also reads the previous action, which at a corridor's first
  step is the turn the superseded cue asked for.) With `--superseded-depth D` the superseded
  probe also reads the cues 2 .. D corridors back (column `corridors_back`; rows need a corridor
  index >= that depth): how many rewrites an old cue survives.

On the card sequences every step shows a new cue (the card's suit, 4 classes, chance 1/4): the
retention probe at k reads the suit shown k steps ago, for k = 0 .. `--max-k` (default 2 (k_env - 1)
on RepeatPrevious, twice the lag its answer needs, so that suits no longer needed show whether they
are dropped; the episode length on RepeatFirst). Every probe reads the same states: those after
step t = max-k, max-k + `--record-every`, .. of each episode (earlier steps lack the older suits).

Writes `probes.csv`, `probes.json` (rows plus per-run details) and `probes.png` (accuracy vs k,
chance drawn, one line per run labelled by its backbone; with a depth above 1 also accuracy vs
corridors back at k = 0) into `--out-dir`, each atomically.
T-maze cues are uniform over left/right, so chance is 1/2 (1/4 for suits); each row also reports the majority
baseline (the train split's most frequent cue scored on the test split), which a small or lopsided cell can raise.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.run import ArtifactError, checkpoint_path, read_json, write_atomically, write_json
from agents.train import load_trained_agent, make_training_env
from envs.endless_tmaze import EndlessTMaze
from envs.popgym import SUITS, RepeatFirst, RepeatPrevious
from envs.registry import presets
from envs.tmaze import PassiveTMaze, TMaze

NUM_CUES = 2
CHANCE = 1.0 / NUM_CUES
LEGEND_COLUMNS = 3
CUE_TASKS = (TMaze, PassiveTMaze, EndlessTMaze)
SEQUENCE_TASKS = (RepeatPrevious, RepeatFirst)
"""Tasks whose observation is the one-hot suit of the card shown: every step shows a new cue."""
PROBED_TASKS = CUE_TASKS + SEQUENCE_TASKS
COLUMNS = ("label", "backbone", "agent", "env", "run_dir", "probe", "corridors_back", "k", "accuracy",
           "train_accuracy", "l2", "train_samples", "test_samples", "chance", "majority_baseline")


class UsageError(ValueError):
    """Bad input: reported in one sentence, exit code 2."""


def state_leaves(state: dict) -> list[torch.Tensor]:
    """Every tensor of a (possibly nested) state dict, keys in sorted order."""
    leaves = []
    for key in sorted(state):
        value = state[key]
        leaves.extend(state_leaves(value) if isinstance(value, dict) else [value])
    return leaves


def state_features(state: dict, batch_size: int) -> torch.Tensor:
    """A batch-first state dict -> float32 [batch_size, F] on the CPU, every tensor flattened and concatenated.

    Complex tensors give their real and imaginary parts; masks and integers become floats; a
    state without tensors (the memoryless backbone) gives F = 0.
    """
    parts = []
    for value in state_leaves(state):
        if value.is_complex():
            value = torch.view_as_real(value)
        parts.append(value.reshape(batch_size, -1).float().cpu())
    return torch.cat(parts, dim=1) if parts else torch.zeros(batch_size, 0)


@dataclass
class Recording:
    """One row per recorded step (on the CPU): the state after reading the observation, and its labels.

    features [M, F]; episode [M] (the env index: each env's first episode is kept);
    steps_since_cue [M] (0 where the observation shows the current corridor's cue); cue [M] of the
    current corridor; corridor [M], its index in the episode; earlier_cues [M, D], column j - 1 the
    cue of the corridor j back (-1 where the episode has no such corridor).
    """

    features: torch.Tensor
    episode: torch.Tensor
    steps_since_cue: torch.Tensor
    cue: torch.Tensor
    corridor: torch.Tensor
    earlier_cues: torch.Tensor
    success_rate: float


@torch.no_grad()
def record_rollout(agent, env, max_k: int, depth: int = 1) -> Recording:
    """Play one episode in every env of `env` with `agent.act(..., deterministic=True)`; keep the steps
    with steps_since_cue <= max_k, labelled with the cues of up to `depth` earlier corridors.
    `env` provides `memory_labels()` -> {"cue", "corridor"} [N]."""
    device = env.device
    obs, info = env.reset()
    is_first = info["is_first"]
    labels = env.memory_labels()
    cue, corridor = labels["cue"], labels["corridor"]
    earlier_cues = torch.full((env.num_envs, depth), -1, dtype=cue.dtype, device=device)
    steps_since_cue = torch.zeros_like(cue)
    episode = torch.arange(env.num_envs, device=device)
    finished = torch.zeros(env.num_envs, dtype=torch.bool, device=device)
    successes = torch.zeros(env.num_envs, dtype=torch.bool, device=device)
    state = agent.initial_state(env.num_envs, device)
    rows: list[dict[str, torch.Tensor]] = []
    while not bool(finished.all()):
        action, state = agent.act(obs, state, is_first, deterministic=True)
        keep = ~finished & (steps_since_cue <= max_k)
        if bool(keep.any()):
            keep = keep.cpu()
            rows.append({name: value.cpu()[keep] for name, value in (
                ("features", state_features(state, env.num_envs)), ("episode", episode),
                ("steps_since_cue", steps_since_cue), ("cue", cue), ("corridor", corridor),
                ("earlier_cues", earlier_cues))})
        obs, _, _, _, info = env.step(action)
        successes |= info["success"] & ~finished
        finished |= info["episode_done"]
        is_first = info["is_first"]
        labels = env.memory_labels()
        cue_shown = is_first | (labels["corridor"] != corridor)
        shifted = torch.cat([cue[:, None], earlier_cues[:, :-1]], dim=1)
        earlier_cues = torch.where(is_first[:, None], -1, torch.where(cue_shown[:, None], shifted, earlier_cues))
        steps_since_cue = torch.where(cue_shown, 0, steps_since_cue + 1)
        cue, corridor = labels["cue"], labels["corridor"]
    columns = {name: torch.cat([row[name] for row in rows]) for name in rows[0]}
    return Recording(**columns, success_rate=successes.float().mean().item())


@dataclass
class SequenceRecording:
    """The states after step t = max_k, max_k + record_every, .. of each env's first episode (on the CPU).

    features [M, F]; episode [M] (the env index); step [M] (t); shown [M, max_k + 1], column k the
    symbol the observation showed k steps before (column 0: the one just read).
    """

    features: torch.Tensor
    episode: torch.Tensor
    step: torch.Tensor
    shown: torch.Tensor
    success_rate: float


@torch.no_grad()
def record_sequence_rollout(agent, env, max_k: int, record_every: int) -> SequenceRecording:
    """Play one episode in every env of `env` greedily; the symbol shown is the argmax of the one-hot
    observation. Steps before max_k are played but not recorded (they lack the older symbols)."""
    if max_k >= env.max_episode_steps:
        raise UsageError(f"--max-k {max_k} is not below the episode length: no step has the suit "
                         f"{max_k} steps back")
    obs, info = env.reset()
    is_first = info["is_first"]
    history = torch.zeros(env.num_envs, max_k + 1, dtype=torch.int64, device=env.device)
    episode = torch.arange(env.num_envs, device=env.device)
    step = torch.zeros(env.num_envs, dtype=torch.int64, device=env.device)
    finished = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    successes = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    state = agent.initial_state(env.num_envs, env.device)
    rows: list[dict[str, torch.Tensor]] = []
    while not bool(finished.all()):
        history = torch.cat([obs.argmax(1, keepdim=True), history[:, :-1]], dim=1)
        action, state = agent.act(obs, state, is_first, deterministic=True)
        keep = ~finished & (step >= max_k) & ((step - max_k) % record_every == 0)
        if bool(keep.any()):
            keep = keep.cpu()
            rows.append({name: value.cpu()[keep] for name, value in (
                ("features", state_features(state, env.num_envs)), ("episode", episode), ("step", step),
                ("shown", history))})
        obs, _, _, _, info = env.step(action)
        successes |= info["success"] & ~finished
        finished |= info["episode_done"]
        is_first = info["is_first"]
        step += 1
    columns = {name: torch.cat([row[name] for row in rows]) for name in rows[0]}
    return SequenceRecording(**columns, success_rate=successes.float().mean().item())


def train_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                test_labels: torch.Tensor, num_classes: int = NUM_CUES, l2: float = 1e-3,
                iterations: int = 200) -> tuple[float, float]:
    """Multinomial logistic regression on features standardised with the train split's statistics:
    full-batch L-BFGS on mean cross-entropy + l2 * |W|^2 -> (held-out accuracy, train accuracy).

    features [M, F] (F may be 0: the probe then predicts the train split's majority class), labels int64 [M].
    """
    train_x, test_x = train_features.double(), test_features.double()
    mean = train_x.mean(0)
    std = (train_x - mean).square().mean(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        test_accuracy = ((test_x @ weight + bias).argmax(1) == test_labels).double().mean().item()
        train_accuracy = ((train_x @ weight + bias).argmax(1) == train_labels).double().mean().item()
    return test_accuracy, train_accuracy


def choose_l2(features: torch.Tensor, labels: torch.Tensor, episode: torch.Tensor, l2_grid: list[float],
              num_classes: int = NUM_CUES) -> float:
    """The L2 coefficient of `l2_grid` whose probe, fitted on the first 3/4 of these (train) episodes, is
    most accurate on the last 1/4; ties go to the stronger penalty. One value, or one episode: that value.
    Labels are 0 .. num_classes - 1."""
    episodes = episode.unique()
    grid = sorted(l2_grid, reverse=True)
    if len(grid) == 1 or len(episodes) < 2:
        return grid[0]
    fit = episode < episodes[max(1, len(episodes) * 3 // 4)]
    best_l2, best_accuracy = grid[0], -1.0
    for l2 in grid:
        accuracy, _ = train_probe(features[fit], labels[fit], features[~fit], labels[~fit], num_classes, l2=l2)
        if accuracy > best_accuracy:
            best_l2, best_accuracy = l2, accuracy
    return best_l2


def majority_baseline(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Test accuracy of always answering the train split's most frequent label: what a probe
    with no information scores (above 1/2 when a (probe, k) cell holds mostly one cue)."""
    majority = torch.bincount(train_labels.long(), minlength=NUM_CUES).argmax()
    return float((test_labels.long() == majority).float().mean())


def fitted_row(features: torch.Tensor, labels: torch.Tensor, episode: torch.Tensor, train: torch.Tensor,
               test: torch.Tensor, l2_grid: list[float], num_classes: int) -> dict:
    """One probe: its L2 chosen on the `train` rows, fitted there, scored on the `test` rows."""
    l2 = choose_l2(features[train], labels[train], episode[train], l2_grid, num_classes)
    accuracy, train_accuracy = train_probe(features[train], labels[train], features[test], labels[test],
                                           num_classes, l2=l2)
    return {"accuracy": accuracy, "train_accuracy": train_accuracy, "l2": l2, "train_samples": int(train.sum()),
            "test_samples": int(test.sum()), "chance": 1.0 / num_classes,
            "majority_baseline": majority_baseline(labels[train], labels[test])}


def probed_ks(max_k: int, k_step: int) -> list[int]:
    """k = 0, k_step, 2 k_step, .. up to max_k, and max_k itself (the junction, where the cue is needed)."""
    return sorted({*range(0, max_k + 1, k_step), max_k})


def probe_rows(recording: Recording, train_episodes: int, ks: list[int], l2_grid: list[float]) -> list[dict]:
    """Fit every probe at every k of `ks`: episodes < train_episodes train (the L2 coefficient chosen among
    `l2_grid` on a validation part of them), the rest test. A (probe, k) with no train or no test
    sample is left out."""
    in_train = recording.episode < train_episodes
    after_first = recording.corridor >= 1
    everywhere = torch.ones_like(in_train)
    probes = [("retention", 0, recording.cue, everywhere), ("current", 0, recording.cue, after_first)]
    probes += [("superseded", back, recording.earlier_cues[:, back - 1], recording.corridor >= back)
               for back in range(1, recording.earlier_cues.shape[1] + 1)]
    rows = []
    for probe, corridors_back, labels, eligible in probes:
        for k in ks:
            selected = eligible & (recording.steps_since_cue == k)
            train, test = selected & in_train, selected & ~in_train
            if not (bool(train.any()) and bool(test.any())):
                continue
            rows.append({"probe": probe, "corridors_back": corridors_back, "k": k,
                         **fitted_row(recording.features, labels, recording.episode, train, test, l2_grid, NUM_CUES)})
    return rows


def sequence_probe_rows(recording: SequenceRecording, train_episodes: int, ks: list[int],
                        l2_grid: list[float]) -> list[dict]:
    """The retention probe at every k of `ks` (the suit shown k steps ago), each on every recorded state:
    episodes < train_episodes train, the rest test."""
    train = recording.episode < train_episodes
    return [{"probe": "retention", "corridors_back": 0, "k": k,
             **fitted_row(recording.features, recording.shown[:, k], recording.episode, train, ~train, l2_grid, SUITS)}
            for k in ks]


def default_max_k(env) -> int:
    """The corridor length on the T-mazes; on RepeatPrevious twice the answer's lag k - 1; on RepeatFirst
    the last step."""
    if isinstance(env, RepeatPrevious):
        return 2 * (env.k - 1)
    if isinstance(env, RepeatFirst):
        return env.max_episode_steps - 1
    return env.max_length if isinstance(env, EndlessTMaze) else env.corridor_length


def read_run(run_dir: Path) -> dict:
    """The run config of a `train-agent` run dir on a probed task; UsageError in one sentence otherwise."""
    if not run_dir.is_dir():
        raise UsageError(f"run dir {run_dir} does not exist")
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"{run_dir} is not a train-agent run dir: it has no config.json")
    checkpoint_path(run_dir)
    run = read_json(run_dir / "config.json", {"run.env": str, "run.backbone": str, "run.agent": str})["run"]
    env_name, backbone, agent = run["env"], run["backbone"], run["agent"]
    if env_name not in presets() or presets()[env_name][0] not in PROBED_TASKS:
        raise UsageError(
            f"run {run_dir} was trained on {env_name!r}; memory probes need a T-maze, Endless T-Maze or POPGym "
            "RepeatPrevious/RepeatFirst run (memory-retention, memory-rewrite, tmaze*, endless-tmaze*, "
            "popgym-repeat-previous-*, popgym-repeat-first-*)"
        )
    return {"run_dir": str(run_dir), "env": env_name, "backbone": backbone, "agent": agent}


def legend_labels(runs: list[dict]) -> list[str]:
    """The backbone (plus the agent when it is not PPO); the run dir's name is added where labels repeat."""
    labels = [run["backbone"] + ("" if run["agent"] == "ppo" else f" ({run['agent']})") for run in runs]
    return [f"{label} [{Path(run['run_dir']).name}]" if labels.count(label) > 1 else label
            for label, run in zip(labels, runs)]


def informative_rows(rows: list[dict]) -> list[dict]:
    """The rows whose test split holds both cues (majority baseline strictly between 0 and 1). In the
    others every test label is the same cue, typically because only episodes with that cue got so far
    (a memoryless agent that always turns left passes a junction only after a left cue), so their
    accuracy cannot tell decoding from guessing."""
    return [row for row in rows if 0.0 < row["majority_baseline"] < 1.0]


def plot(rows: list[dict], labels: list[str], title: str) -> bytes:
    """PNG: retention accuracy vs k per run and, when there are such rows, current vs superseded (the
    cue one corridor back) and the superseded cue's accuracy at k = 0 vs how many corridors back it is.
    Only `informative_rows` are drawn; the CSV keeps every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = informative_rows(rows)
    chance = rows[0]["chance"] if rows else CHANCE
    has_rewrite = any(row["probe"] != "retention" for row in rows)
    deepest = max((row["corridors_back"] for row in rows), default=0)
    panels = [("retention: cue shown k steps ago", "k (steps since the cue)", (("retention", "-"),))]
    if has_rewrite:
        panels.append(("rewrite: current vs superseded cue", "k (steps since the current cue)",
                       (("current", "-"), ("superseded", "--"))))
    if deepest > 1:
        panels.append(("superseded cue, k = 0: how many rewrites it survives", "corridors back",
                       (("depth", "-"),)))
    # Each panel's legend gets its own row below the plots, sized to its entries, so it never covers them.
    legend_rows = max(math.ceil((len(labels) * len(probes) + 1) / LEGEND_COLUMNS) for _, _, probes in panels)
    panel_width_inches = 5.5
    figure = plt.figure(figsize=(panel_width_inches * len(panels), 3.8 + 0.2 * legend_rows), layout="constrained")
    grid = figure.add_gridspec(2, len(panels), height_ratios=(3.8, 0.2 * legend_rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*X"
    for column, (panel_title, x_label, probes) in enumerate(panels):
        axis = figure.add_subplot(grid[0, column])
        series = len(labels) * len(probes)
        for index, label in enumerate(labels):
            for probe_index, (probe, style) in enumerate(probes):
                # Curves are dodged sideways a little so that equal ones (all at 1.0, say) stay visible.
                dodge = 0.05 * (index * len(probes) + probe_index - (series - 1) / 2)
                if probe == "depth":
                    points = [(row["corridors_back"] + dodge, row["accuracy"]) for row in rows
                              if row["label"] == label and row["probe"] == "superseded" and row["k"] == 0]
                else:
                    points = [(row["k"] + dodge, row["accuracy"]) for row in rows
                              if row["label"] == label and row["probe"] == probe and row["corridors_back"] <= 1]
                if points:
                    ks, accuracies = zip(*points)
                    name = label if len(probes) == 1 else f"{label}: {probe}"
                    axis.plot(ks, accuracies, style, marker=markers[index % len(markers)], markersize=4,
                              color=colours[index % len(colours)], label=name,
                              fillstyle="none" if probe == "superseded" else "full")
        axis.axhline(chance, color="grey", linestyle=":", label="chance")
        axis.set(title=panel_title, xlabel=x_label, ylabel="held-out probe accuracy", ylim=(-0.02, 1.05))
        legend_axis = figure.add_subplot(grid[1, column])
        legend_axis.axis("off")
        legend_axis.legend(*axis.get_legend_handles_labels(), fontsize="small", loc="upper center",
                           ncol=LEGEND_COLUMNS, frameon=False)
    # About 8 characters of the default font per inch: wrap so a long env name is not cut at the edges.
    figure.suptitle(textwrap.fill(title, width=int(8 * panel_width_inches * len(panels))))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.memory_probes", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="train-agent run dirs, all on the same task")
    parser.add_argument("--out-dir", type=Path, default=Path("probes"), help="where probes.csv/json/png go")
    parser.add_argument("--episodes", type=int, default=512, help="greedy episodes recorded per run")
    parser.add_argument("--train-fraction", type=float, default=0.75, help="share of the episodes the probes fit on")
    parser.add_argument("--max-k", type=int, default=None,
                        help="largest k probed; None means the corridor length (T-mazes), twice the answer's lag "
                             "(RepeatPrevious) or the last step (RepeatFirst)")
    parser.add_argument("--k-step", type=int, default=1,
                        help="probe every k-step-th k from 0 (and max-k itself): fewer fits on long corridors")
    parser.add_argument("--record-every", type=int, default=8,
                        help="card sequences: record the state every this many steps from step max-k on")
    parser.add_argument("--superseded-depth", type=int, default=1,
                        help="Endless T-Maze: probe the cues of up to this many earlier corridors "
                             "(1: the previous one)")
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                        help="L2 coefficients on the probe weights; with several, each probe takes the one that "
                             "does best on a validation quarter of the train episodes")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch CPU threads (0 keeps torch's default; the probes are small, more threads "
                             "rarely help)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe episodes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def run_probes(args: argparse.Namespace) -> dict:
    if args.episodes < 2:
        raise UsageError(f"--episodes must be at least 2 (train and test splits), got {args.episodes}")
    train_episodes = int(args.episodes * args.train_fraction)
    if not 0 < train_episodes < args.episodes:
        raise UsageError(f"--train-fraction {args.train_fraction} leaves no train or no test episode "
                         f"out of {args.episodes}; choose a fraction in (0, 1)")
    if args.max_k is not None and args.max_k < 0:
        raise UsageError(f"--max-k must be 0 or more, got {args.max_k}")
    if args.k_step < 1:
        raise UsageError(f"--k-step must be 1 or more, got {args.k_step}")
    if args.record_every < 1:
        raise UsageError(f"--record-every must be 1 or more, got {args.record_every}")
    if args.superseded_depth < 1:
        raise UsageError(f"--superseded-depth must be 1 or more, got {args.superseded_depth}")
    if min(args.l2) < 0:
        raise UsageError(f"--l2 values must be 0 or more, got {args.l2}")
    if args.torch_threads < 0:
        raise UsageError(f"--torch-threads must be 0 or more, got {args.torch_threads}")
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise UsageError(f"device must be cpu or an available cuda device, got {args.device!r}")
    runs = [read_run(run_dir) for run_dir in args.run_dirs]
    tasks = [presets()[run["env"]] for run in runs]
    for run, task in zip(runs[1:], tasks[1:]):
        if task != tasks[0]:
            raise UsageError(f"runs {runs[0]['run_dir']} ({runs[0]['env']}) and {run['run_dir']} ({run['env']}) "
                             "are on different tasks; probe one task per output dir")
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device)
    rows: list[dict] = []
    for run, label in zip(runs, legend_labels(runs)):
        agent, _ = load_trained_agent(Path(run["run_dir"]), device)
        env = make_training_env(run["env"], args.episodes, device, args.seed)
        max_k = default_max_k(env) if args.max_k is None else args.max_k
        ks = probed_ks(max_k, args.k_step)
        if isinstance(env, SEQUENCE_TASKS):
            recording = record_sequence_rollout(agent, env, max_k, args.record_every)
            fitted = sequence_probe_rows(recording, train_episodes, ks, args.l2)
        else:
            recording = record_rollout(agent, env, max_k, args.superseded_depth)
            fitted = probe_rows(recording, train_episodes, ks, args.l2)
        run.update(label=label, feature_dim=recording.features.shape[1], max_k=max_k,
                   rollout_success_rate=recording.success_rate)
        for row in fitted:
            rows.append({"label": label, "backbone": run["backbone"], "agent": run["agent"], "env": run["env"],
                         "run_dir": run["run_dir"], **row})
        print(f"memory_probes: {label}: {len(recording.episode)} recorded steps, "
              f"{recording.features.shape[1]} state features, greedy success {recording.success_rate:.2f}",
              file=sys.stderr)
    settings = {"episodes": args.episodes, "train_episodes": train_episodes, "l2_grid": args.l2, "seed": args.seed,
                "superseded_depth": args.superseded_depth, "record_every": args.record_every,
                "chance": 1.0 / SUITS if issubclass(tasks[0][0], SEQUENCE_TASKS) else CHANCE}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out_dir / "probes.csv", csv_bytes(rows))
    write_json(args.out_dir / "probes.json", {"settings": settings, "runs": runs, "probes": rows})
    write_atomically(args.out_dir / "probes.png", plot(rows, [run["label"] for run in runs],
                                                       f"linear probes of the recurrent state on {runs[0]['env']}"))
    return {"runs": runs, "probes": rows}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run_probes(args)
    except (UsageError, ArtifactError) as error:
        parser.exit(2, f"memory_probes: error: {error}\n")
    print(f"memory_probes: wrote probes.csv, probes.json and probes.png to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

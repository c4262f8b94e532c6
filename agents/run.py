"""What every training run shares, whatever the agent: run directory, atomic files,
checkpoints, tensorboard, episode statistics, the progress line, seeding and the torchrun context."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import re
import sys
import tempfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

CHECKPOINT_NAME = "checkpoint.pt"
LEGACY_CHECKPOINT_NAME = "checkpoint.pkl"
"""What memrl before the safe format wrote (cloudpickle); never opened, only recognised."""
CHECKPOINT_FORMAT = "memrl-checkpoint"
CHECKPOINT_VERSION = 1
"""Stored in every checkpoint; a checkpoint of another version is refused in one sentence."""
PLAIN_LEAVES = (torch.Tensor, bool, int, float, str, type(None))


class CheckpointWriteFailed(RuntimeError):
    """Writing a checkpoint failed (disk full, say); the previous checkpoint is left as it was."""


class ArtifactError(ValueError):
    """A file a run or study wrote that is truncated, corrupt or foreign; the message is one
    sentence that names the file and what is wrong (a CLI prints it and exits with code 2)."""


class CheckpointError(ArtifactError):
    """A checkpoint that cannot be used: missing, of the old pickle format, truncated, foreign or
    of another version. The message is one sentence that names the file and what is wrong."""


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or inf; the last good checkpoint is left as it was."""


def check_finite_parameters(module: torch.nn.Module, agent_name: str, when: str) -> None:
    """Raise TrainingDiverged, naming the first bad parameter, when any parameter of `module` holds
    nan or inf (one host sync). Trainers call it before acting and before writing a checkpoint, so
    poisoned weights neither crash action sampling nor overwrite the last good checkpoint."""
    if bool(torch.stack([parameter.isfinite().all() for parameter in module.parameters()]).all()):
        return
    name = next(name for name, parameter in module.named_parameters() if not bool(parameter.isfinite().all()))
    raise TrainingDiverged(f"the {agent_name} parameter {name} became nan or inf {when}; "
                           "training stopped and the last good checkpoint was kept")


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, required: dict[str, type | tuple[type, ...]]) -> dict:
    """The JSON object in `path`, checked to hold every `required` entry ("a.b" reaches into
    nested objects) with a value of the given type(s); ArtifactError in one sentence otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({str(error).splitlines()[0]})") from None
    for name, kind in required.items():
        value: Any = data
        for key in name.split("."):
            if not isinstance(value, dict) or key not in value:
                raise ArtifactError(f"{path} is not what memrl writes: it has no {name!r} entry")
            value = value[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # True is an int too
            expected = " or ".join(k.__name__ for k in kinds)
            raise ArtifactError(f"{path} is not what memrl writes: {name!r} is {value!r} (expected {expected})")
    return data


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise TypeError, naming the entry, for anything but tensors, numbers, strings, None and
    dicts/lists/tuples of them: what torch's `weights_only` loading accepts without running code."""
    if isinstance(value, PLAIN_LEAVES):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; checkpoint keys are str or int")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold only tensors, numbers, strings, None "
                    "and dicts/lists/tuples of them")


def save_checkpoint(run_dir: Path, payload: dict) -> None:
    """`torch.save` of plain data (config, state_dicts, counters, RNG states as tensors and lists)
    tagged with the format and its version, written atomically to `run_dir/checkpoint.pt`.

    Temp files a killed writer left behind are removed first (one process writes a run dir).
    CheckpointWriteFailed (one sentence) when the disk refuses; the old checkpoint stays intact.
    """
    check_plain(payload)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buffer)
    path = Path(run_dir) / CHECKPOINT_NAME
    for stale in path.parent.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    try:
        write_atomically(path, buffer.getvalue())
    except OSError as error:
        raise CheckpointWriteFailed(f"could not write {path} ({error.strerror or error}); "
                                    "the previous checkpoint was left as it was") from None


def checkpoint_path(run_dir: Path) -> Path:
    """`run_dir`'s checkpoint file; CheckpointError when there is none or only an old-format one."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if path.is_file():
        return path
    if (run_dir / LEGACY_CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"{run_dir} holds only {LEGACY_CHECKPOINT_NAME}, the old pickle format that can run code when loaded, "
            f"so it is not opened; train the run again to get a safe {CHECKPOINT_NAME}"
        )
    if not run_dir.is_dir():
        raise CheckpointError(f"no checkpoint to load: run dir {run_dir} does not exist or is not a directory")
    raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")


def load_checkpoint(run_dir: Path) -> dict:
    """The payload `save_checkpoint` wrote into `run_dir`, tensors on the CPU.

    Loading runs no code from the file: only complete torch zip archives are opened, with
    `torch.load(weights_only=True)`, which rebuilds tensors and plain containers and refuses
    any other object. Missing, old-format, truncated, foreign or other-version files raise
    CheckpointError with one sentence.
    """
    path = checkpoint_path(run_dir)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or is not a memrl checkpoint (not a complete torch archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL (\S+)", str(error))
        what = f"a reference to {blocked.group(1)}" if blocked else "objects other than tensors and plain data"
        raise CheckpointError(f"{path} was refused: it holds {what}, "
                              "and loading that could run code from the file") from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error).split(".")[0].strip() or type(error).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a memrl checkpoint (it has no {CHECKPOINT_FORMAT!r} format tag)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')!r}; "
                              f"this memrl reads version {CHECKPOINT_VERSION} only")
    return payload


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python's, numpy's, torch's (and CUDA's) global RNG states as tensors and numbers, so a
    checkpoint holds them without pickled objects."""
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Set the global RNGs to what `rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel job started by torchrun.

    `Distributed()` is a lone process: every collective below returns its input and nothing
    touches torch.distributed. Under torchrun (`from_environment`), `start` opens the process
    group (gloo on CPU, nccl on CUDA) and the collectives span every rank.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    torchrun: bool = False

    @classmethod
    def from_environment(cls) -> "Distributed":
        """The torchrun job this process belongs to, read from RANK, WORLD_SIZE and LOCAL_RANK (set by torchrun)."""
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        if not all(name in os.environ for name in names):
            return cls()
        rank, world_size, local_rank = (int(os.environ[name]) for name in names)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, torchrun=True)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and results."""
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if not self.torchrun:
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.torchrun and dist.is_initialized():
            dist.destroy_process_group()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all ranks (a new tensor; `tensor` itself on a lone process)."""
        if not self.torchrun:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world_size

    def all_gather(self, value: Any) -> list:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.torchrun:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in its nested dicts, lists and tuples moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def open_writer(run_dir: Path, purge_step: int | None = None) -> SummaryWriter:
    """Tensorboard writer in the run dir; on resume, events after `purge_step` are dropped."""
    return SummaryWriter(str(run_dir), purge_step=purge_step)


class EpisodeStatistics:
    """Finished-episode returns, lengths and successes: logged per episode, averaged for the bar.

    `log_iteration`, called once per training iteration (a PPO rollout, a Dreamer log interval),
    logs `charts/episodic_return_smoothed`: RLlib's `episode_reward_mean`, on which POPGym's MMER
    is read, i.e. the mean return over the episodes that ended in the iteration, topped up with the
    latest earlier ones to `window` (100) where fewer ended.

    Under torchrun, `record` only buffers this rank's episodes and `gather` (called by every
    rank at the end of a rollout) adds all ranks' episodes on every rank and logs their means,
    so each rank holds the statistics of the whole job.
    """

    def __init__(self, window: int = 100, distributed: Distributed = Distributed()):
        self.returns: deque[float] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self.successes: deque[float] = deque(maxlen=window)
        self.episodes = 0
        self.iteration_returns: list[float] = []
        self.distributed = distributed
        self.pending: dict[str, list] = {"returns": [], "lengths": [], "successes": []}

    def record(self, info: dict[str, torch.Tensor], writer: SummaryWriter | None, global_step: int) -> None:
        """Record the episodes that `info["episode_done"]` marks (one host copy, only when some ended)."""
        done = info["episode_done"]
        if not bool(done.any()):
            return
        returns = info["episode_return"][done].tolist()
        lengths = info["episode_length"][done].tolist()
        successes = info["success"][done].float().tolist()
        if self.distributed.torchrun:
            for key, values in zip(self.pending, (returns, lengths, successes)):
                self.pending[key].extend(values)
        else:
            self.add(returns, lengths, successes, writer, global_step)

    def gather(self, writer: SummaryWriter | None, global_step: int) -> None:
        """Under torchrun, add every rank's episodes recorded since the last call (a collective: all ranks call it)."""
        if not self.distributed.torchrun:
            return
        ranks = self.distributed.all_gather(self.pending)
        self.pending = {key: [] for key in self.pending}
        merged = {key: [value for rank in ranks for value in rank[key]] for key in self.pending}
        if merged["returns"]:
            self.add(merged["returns"], merged["lengths"], merged["successes"], writer, global_step)

    def add(self, returns: list[float], lengths: list[int], successes: list[float],
            writer: SummaryWriter | None, global_step: int) -> None:
        self.returns.extend(returns)
        self.lengths.extend(lengths)
        self.successes.extend(successes)
        self.episodes += len(returns)
        self.iteration_returns.extend(returns)
        if writer is not None:
            writer.add_scalar("charts/episodic_return", float(np.mean(returns)), global_step)
            writer.add_scalar("charts/episodic_length", float(np.mean(lengths)), global_step)
            writer.add_scalar("charts/success_rate", float(np.mean(successes)), global_step)

    def log_iteration(self, writer: SummaryWriter | None, global_step: int) -> None:
        """Log the smoothed return of the iteration that ends here (nothing before the first episode)."""
        window = self.iteration_returns if len(self.iteration_returns) >= self.returns.maxlen else self.returns
        if writer is not None and window:
            writer.add_scalar("charts/episodic_return_smoothed", float(np.mean(window)), global_step)
        self.iteration_returns = []

    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else float("nan")

    def state_dict(self) -> dict:
        return {"returns": list(self.returns), "lengths": list(self.lengths),
                "successes": list(self.successes), "episodes": self.episodes,
                "iteration_returns": list(self.iteration_returns)}

    def load_state_dict(self, state: dict) -> None:
        self.returns.extend(state["returns"])
        self.lengths.extend(state["lengths"])
        self.successes.extend(state["successes"])
        self.episodes = state["episodes"]
        self.iteration_returns = list(state.get("iteration_returns", []))  # absent from older checkpoints


def format_duration(seconds: float) -> str:
    """H:MM:SS, with whole days in front past 24 hours ("3d 04:05:06"); "—" when unknown (inf or nan)."""
    if not math.isfinite(seconds):
        return "—"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


class ProgressLine:
    """One self-overwriting status line on stderr: step, SPS, recent success and return, ETA.

    Success shows "—" where the env has no notion of success (`reports_success` False) and, like
    the return, before the first episode ends; the ETA is 0 once `total_steps` is reached and
    counts days past 24 hours.
    """

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total_steps = total_steps
        self.enabled = enabled and sys.stderr is not None
        self.interactive = self.enabled and sys.stderr.isatty()
        self.last_print = 0.0
        self.width = 0

    def text(self, step: int, steps_per_second: float, statistics: EpisodeStatistics,
             reports_success: bool = True) -> str:
        fraction = min(step / self.total_steps, 1.0)
        remaining = max(self.total_steps - step, 0)
        eta = 0.0 if remaining == 0 else (remaining / steps_per_second if steps_per_second > 0 else math.inf)
        finished = statistics.episodes > 0
        success = f"{statistics.success_rate():.2f}" if finished and reports_success else "—"
        episode_return = f"{statistics.mean_return():.3f}" if finished else "—"
        return (
            f"[{fraction:6.1%}] step {step:,}/{self.total_steps:,} | {steps_per_second:,.0f} SPS | "
            f"success {success} | return {episode_return} | episodes {statistics.episodes:,} | "
            f"eta {format_duration(eta)}"
        )

    def update(self, step: int, steps_per_second: float, statistics: EpisodeStatistics, final: bool = False,
               reports_success: bool = True) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last_print < (0.5 if self.interactive else 10.0):
            return
        self.last_print = now
        line = self.text(step, steps_per_second, statistics, reports_success)
        if self.interactive:  # pad over what is left of a longer previous line
            line, self.width = "\r" + line.ljust(self.width), len(line)
        sys.stderr.write(line + ("\n" if final or not self.interactive else ""))
        sys.stderr.flush()


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@torch.no_grad()
def evaluate(agent: torch.nn.Module, env, deterministic: bool = True) -> dict[str, float]:
    """Run `agent` until every env of `env` has finished one episode; each env's first counts.

    `agent` provides `initial_state(batch_size, device)` and
    `act(obs, state, is_first, deterministic) -> (action, state)` (PPO's and Dreamer's do).

    Counting only each env's first episode keeps the estimate unbiased (counting episodes as
    they finish would favour short ones). Returns success rate, return mean/std, mean length,
    episodes, steps and wall time.
    """
    started = time.perf_counter()
    device = next(agent.parameters()).device
    obs, info = env.reset()
    is_first = info["is_first"]
    state = agent.initial_state(env.num_envs, device)
    finished = torch.zeros(env.num_envs, dtype=torch.bool, device=device)
    returns = torch.zeros(env.num_envs, device=device)
    lengths = torch.zeros(env.num_envs, device=device)
    successes = torch.zeros(env.num_envs, device=device)
    steps = 0
    while not bool(finished.all()):
        action, state = agent.act(obs, state, is_first, deterministic)
        obs, _, _, _, info = env.step(action)
        is_first = info["is_first"]
        steps += env.num_envs
        first_finish = info["episode_done"] & ~finished
        returns = torch.where(first_finish, info["episode_return"].float(), returns)
        lengths = torch.where(first_finish, info["episode_length"].float(), lengths)
        successes = torch.where(first_finish, info["success"].float(), successes)
        finished |= first_finish
    return {
        "success_rate": successes.mean().item(),
        "return_mean": returns.mean().item(),
        "return_std": returns.std(unbiased=False).item(),
        "length_mean": lengths.mean().item(),
        "episodes": env.num_envs,
        "steps": steps,
        "wall_time_seconds": time.perf_counter() - started,
        "deterministic": deterministic,
    }

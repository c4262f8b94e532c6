"""Aggregate scores over runs and tasks: mean, median, IQM and stratified-bootstrap intervals.

Scores are a ``[num_runs, num_tasks]`` array (one column per game or env, one row per seed),
as in Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice". The
interquartile mean drops the lowest and highest quarter of all run-task scores and averages
the rest. The confidence interval resamples runs with replacement *within each task* (the
stratified bootstrap), so every task keeps its weight in every resample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Aggregate = Callable[[np.ndarray], float]


def interquartile_mean(scores: np.ndarray) -> float:
    """Mean of the middle half of all scores (``int(0.25 * n)`` dropped from each end)."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("interquartile_mean needs at least one score; got an empty array.")
    cut = int(0.25 * values.size)
    return float(values[cut : values.size - cut].mean())


def mean(scores: np.ndarray) -> float:
    """Mean over runs of each task, then over tasks (equal to the mean of all scores)."""
    return float(np.asarray(scores, dtype=np.float64).mean())


def median(scores: np.ndarray) -> float:
    """Median over tasks of each task's mean over runs, as Atari tables report it."""
    return float(np.median(np.asarray(scores, dtype=np.float64).mean(axis=0)))


AGGREGATES: dict[str, Aggregate] = {"mean": mean, "median": median, "iqm": interquartile_mean}


def as_run_task_matrix(scores: np.ndarray) -> np.ndarray:
    """Check and return scores as a float64 ``[num_runs, num_tasks]`` array (1-D means one task)."""
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"scores must be a non-empty [runs, tasks] array; got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError("scores must be finite; got NaN or infinity.")
    return matrix


def stratified_bootstrap_ci(
    scores: np.ndarray,
    aggregate: Aggregate,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``aggregate`` over resamples of runs drawn within each task."""
    matrix = as_run_task_matrix(scores)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}.")
    num_runs, num_tasks = matrix.shape
    generator = np.random.default_rng(seed)
    run_indices = generator.integers(0, num_runs, size=(num_resamples, num_runs, num_tasks))
    resampled = np.take_along_axis(matrix[None].repeat(num_resamples, axis=0), run_indices, axis=1)
    statistics = np.array([aggregate(sample) for sample in resampled])
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(statistics, [tail, 100.0 - tail])
    return float(low), float(high)


def summarize(scores: np.ndarray, num_resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Point estimate and 95% stratified-bootstrap interval for mean, median and IQM."""
    matrix = as_run_task_matrix(scores)
    summary: dict[str, float] = {}
    for name, aggregate in AGGREGATES.items():
        low, high = stratified_bootstrap_ci(matrix, aggregate, num_resamples=num_resamples, seed=seed)
        summary[name] = aggregate(matrix)
        summary[f"{name}_low"] = low
        summary[f"{name}_high"] = high
    return summary


def human_normalized(score: np.ndarray | float, random_score: float, human_score: float) -> np.ndarray:
    """(score - random) / (human - random): 0 is a random policy, 1 a human tester."""
    if human_score == random_score:
        raise ValueError(f"human and random scores must differ to normalise; both are {human_score}.")
    return (np.asarray(score, dtype=np.float64) - random_score) / (human_score - random_score)

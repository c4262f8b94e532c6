import numpy as np
import pytest

from agents.scores import (
    human_normalized,
    interquartile_mean,
    mean,
    median,
    stratified_bootstrap_ci,
    summarize,
)


def test_interquartile_mean_drops_a_quarter_from_each_end():
    # 8 scores: the two lowest (0, 1) and the two highest (100, 1000) are dropped.
    assert interquartile_mean(np.array([1000, 0, 3, 4, 1, 5, 100, 6])) == pytest.approx((3 + 4 + 5 + 6) / 4)
    # 6 scores: int(1.5) = 1 dropped from each end.
    assert interquartile_mean(np.array([[9.0, 1.0, 2.0], [3.0, 4.0, -50.0]])) == pytest.approx((1 + 2 + 3 + 4) / 4)
    # Fewer than 4 scores: nothing is dropped.
    assert interquartile_mean(np.array([1.0, 2.0, 6.0])) == pytest.approx(3.0)


def test_median_is_over_task_means_and_mean_over_all_scores():
    scores = np.array([[0.0, 1.0, 10.0], [2.0, 3.0, 20.0]])  # task means 1, 2, 15
    assert median(scores) == pytest.approx(2.0)
    assert mean(scores) == pytest.approx(6.0)


def test_human_normalized_score_matches_the_definition():
    # Pong: random -20.7, human 14.6 -> a score of 14.6 is 1.0, -20.7 is 0.0.
    assert human_normalized(14.6, -20.7, 14.6) == pytest.approx(1.0)
    assert human_normalized(-3.05, -20.7, 14.6) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must differ"):
        human_normalized(1.0, 2.0, 2.0)


def test_bootstrap_interval_of_identical_runs_has_zero_width():
    scores = np.tile(np.array([[0.2, 0.8]]), (5, 1))
    low, high = stratified_bootstrap_ci(scores, mean, num_resamples=200)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


def test_stratified_resampling_never_mixes_tasks():
    # Task 0 always scores 0 or 1, task 1 always 10: a resample that drew runs across tasks
    # could put 10 into task 0's column; stratified, every resample's task-1 mean stays 10.
    scores = np.array([[0.0, 10.0], [1.0, 10.0], [0.0, 10.0], [1.0, 10.0]])
    low, high = stratified_bootstrap_ci(scores, lambda sample: float(sample[:, 1].mean()), num_resamples=300)
    assert low == high == 10.0
    low, high = stratified_bootstrap_ci(scores, lambda sample: float(sample[:, 0].mean()), num_resamples=300)
    assert 0.0 <= low < 0.5 < high <= 1.0


def test_bootstrap_interval_covers_the_point_estimate_and_narrows_with_more_runs():
    generator = np.random.default_rng(0)
    few = generator.normal(0.5, 0.1, size=(5, 3))
    many = generator.normal(0.5, 0.1, size=(80, 3))
    few_low, few_high = stratified_bootstrap_ci(few, interquartile_mean)
    many_low, many_high = stratified_bootstrap_ci(many, interquartile_mean)
    assert few_low <= interquartile_mean(few) <= few_high
    assert many_high - many_low < few_high - few_low


def test_summarize_reports_every_aggregate_with_its_interval():
    summary = summarize(np.array([0.1, 0.4, 0.9]), num_resamples=100)
    for name in ("mean", "median", "iqm"):
        assert summary[f"{name}_low"] <= summary[name] <= summary[f"{name}_high"]
    assert summary["mean"] == pytest.approx(1.4 / 3)


def test_bad_scores_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="non-empty"):
        summarize(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="finite"):
        summarize(np.array([1.0, np.nan]))

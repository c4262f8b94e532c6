"""The smoothed return logged once per iteration is RLlib's episode_reward_mean (what POPGym's MMER reads)."""

from __future__ import annotations

import pytest

from agents.run import EpisodeStatistics


class RecordingWriter:
    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))


def finish(statistics: EpisodeStatistics, returns: list[float], writer=None, step: int = 0) -> None:
    statistics.add(returns, [10] * len(returns), [0.0] * len(returns), writer, step)


def smoothed(writer: RecordingWriter) -> list[tuple[float, int]]:
    return [(value, step) for tag, value, step in writer.scalars if tag == "charts/episodic_return_smoothed"]


def test_an_iteration_with_few_episodes_is_topped_up_with_the_latest_earlier_ones_to_100():
    statistics, writer = EpisodeStatistics(), RecordingWriter()
    statistics.log_iteration(writer, 0)  # no episode has ended yet: nothing to log
    finish(statistics, [0.0] * 50 + [1.0] * 60)  # iteration 1: 110 episodes
    statistics.log_iteration(writer, 100)
    finish(statistics, [-1.0] * 30)  # iteration 2: 30 episodes, topped up with the latest 70 of iteration 1
    statistics.log_iteration(writer, 200)
    statistics.log_iteration(writer, 300)  # iteration 3: none ended, so the latest 100 again
    assert smoothed(writer) == [(pytest.approx(60 / 110), 100), (pytest.approx((60 - 30) / 100), 200),
                                (pytest.approx((60 - 30) / 100), 300)]


def test_an_iteration_with_more_than_100_episodes_averages_all_of_them():
    statistics, writer = EpisodeStatistics(), RecordingWriter()
    finish(statistics, [1.0] * 100)
    statistics.log_iteration(writer, 1)
    finish(statistics, [0.0] * 150 + [1.0] * 50)  # the latest 100 alone would average 1.0
    statistics.log_iteration(writer, 2)
    assert smoothed(writer)[-1] == (pytest.approx(0.25), 2)


def test_the_iteration_so_far_survives_a_checkpoint_and_older_checkpoints_still_load():
    statistics = EpisodeStatistics()
    finish(statistics, [1.0] * 120)
    statistics.log_iteration(None, 1)
    finish(statistics, [0.0] * 120)
    restored, writer = EpisodeStatistics(), RecordingWriter()
    restored.load_state_dict(statistics.state_dict())
    restored.log_iteration(writer, 2)
    assert smoothed(writer) == [(0.0, 2)]  # all 120 of the interrupted iteration, none of the first
    older = {key: value for key, value in statistics.state_dict().items() if key != "iteration_returns"}
    from_older, writer = EpisodeStatistics(), RecordingWriter()
    from_older.load_state_dict(older)
    from_older.log_iteration(writer, 3)
    assert smoothed(writer) == [(0.0, 3)]  # no iteration in progress: the latest 100 episodes

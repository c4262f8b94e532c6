"""The progress line says what is true: no wrapped ETA, "—" where there is nothing to show, a rounded budget announced."""

from __future__ import annotations

import contextlib
import io

import pytest

from agents.run import EpisodeStatistics, ProgressLine, format_duration
from agents.train import main


def statistics(successes: list[float] | None = None) -> EpisodeStatistics:
    stats = EpisodeStatistics()
    if successes:
        stats.add([1.5] * len(successes), [10] * len(successes), successes, writer=None, global_step=0)
    return stats


@pytest.mark.parametrize("seconds, text", [
    (0, "00:00:00"), (59.6, "00:01:00"), (3_600 * 23 + 59 * 60 + 59, "23:59:59"), (86_400, "1d 00:00:00"),
    (100_000, "1d 03:46:40"), (86_400 * 40 + 5, "40d 00:00:05"), (float("inf"), "—"), (float("nan"), "—"),
])
def test_durations_count_days_instead_of_wrapping(seconds, text):
    assert format_duration(seconds) == text


def test_an_eta_beyond_a_day_is_not_wrapped():
    line = ProgressLine(total_steps=10_000_000).text(1_000, 100.0, statistics([1.0]))
    assert line.endswith("eta 1d 03:46:30")


def test_the_eta_is_zero_once_the_total_is_passed():
    progress = ProgressLine(total_steps=2_048)
    assert progress.text(2_048, 500.0, statistics([1.0])).endswith("eta 00:00:00")
    assert progress.text(8_192, 500.0, statistics([1.0])).endswith("eta 00:00:00")
    assert "[100.0%]" in progress.text(8_192, 500.0, statistics([1.0]))


def test_no_speed_yet_is_an_unknown_eta():
    assert ProgressLine(total_steps=100).text(0, 0.0, statistics()).endswith("eta —")


def test_success_and_return_are_dashes_before_the_first_episode_and_without_a_notion_of_success():
    progress = ProgressLine(total_steps=100)
    assert "success — | return — | episodes 0" in progress.text(10, 5.0, statistics())
    assert "success 0.50 | return 1.500 | episodes 2" in progress.text(10, 5.0, statistics([1.0, 0.0]))
    assert "success — | return 1.500 | episodes 2" in progress.text(10, 5.0, statistics([0.0, 0.0]),
                                                                     reports_success=False)


def run_cli(argv: list[str]) -> str:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(argv) == 0
    return stderr.getvalue()


def test_a_budget_below_one_rollout_is_rounded_up_with_a_message(tmp_path):
    stderr = run_cli(["--env", "memory-retention", "--backbone", "none", "--preset", "smoke", "--total-steps", "100",
                      "--eval-episodes", "0", "--run-dir", str(tmp_path / "run")])
    assert ("--total-steps 100 rounded up to 256: PPO trains on whole rollouts of 256 steps (8 envs x 32 steps)"
            in stderr)
    final = stderr.strip().splitlines()[-1]
    assert final.startswith("[100.0%] step 256/256") and final.endswith("eta 00:00:00")


def test_a_gymnasium_env_without_success_shows_a_dash(tmp_path):
    stderr = run_cli(["--env", "CartPole-v1", "--backbone", "none", "--num-envs", "2", "--num-steps", "64",
                      "--num-minibatches", "1", "--update-epochs", "1", "--hidden-dim", "8", "--total-steps", "128",
                      "--eval-episodes", "0", "--run-dir", str(tmp_path / "run")])
    assert "rounded up" not in stderr
    final = stderr.strip().splitlines()[-1]
    assert "success — | return " in final and "return —" not in final, final

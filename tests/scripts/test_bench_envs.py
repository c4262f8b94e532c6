"""scripts/bench_envs.py: the --popgym comparison table and its bad input."""

from __future__ import annotations

import re
from importlib.util import find_spec

import pytest
import torch

from scripts import bench_envs


def test_popgym_rejects_an_env_without_a_popgym_counterpart(capsys):
    if find_spec("popgym") is None:
        pytest.skip("popgym (the dev extra) is not installed")
    with pytest.raises(SystemExit) as exit_info:
        bench_envs.parse_args(["--popgym", "--envs", "tmaze"])
    assert exit_info.value.code == 2
    assert "--popgym times envs with a popgym counterpart; 'tmaze' is not one" in capsys.readouterr().err


@pytest.mark.skipif(find_spec("popgym") is None, reason="popgym (the dev extra) is not installed")
def test_popgym_run_times_both_envs_and_reports_the_ratio(tmp_path):
    output = tmp_path / "envs.md"
    bench_envs.main(["--popgym", "--envs", "popgym-multiarmed-bandit-easy", "--num-envs", "2", "--threads", "1",
                     "--repeats", "1", "--max-steps", "10", "--output", str(output)])
    report = output.read_text()
    row = next(line for line in report.splitlines() if line.startswith("| popgym-multiarmed-bandit-easy | popgym-"))
    cell = re.fullmatch(r"\| popgym-multiarmed-bandit-easy \| popgym-MultiarmedBanditEasy-v0 \| "
                        r"([\d.]+) (k|M) / ([\d.]+) (k|M) \(([\d.]+)x\) \|", row)
    assert cell is not None, row
    scale = {"k": 1e3, "M": 1e6}
    memrl_rate, popgym_rate = float(cell[1]) * scale[cell[2]], float(cell[3]) * scale[cell[4]]
    assert float(cell[5]) == pytest.approx(memrl_rate / popgym_rate, rel=0.1, abs=0.06)
    assert "gymnasium SyncVectorEnv" in report


def test_continuous_tasks_are_timed_on_torques_within_their_bounds():
    env = bench_envs.make_env("popgym-position-only-pendulum-hard", num_envs=3, seed=0)
    actions = bench_envs.random_action_pool(env)
    assert actions.shape == (bench_envs.ACTION_POOL, 3, 1) and actions.dtype == torch.float32
    assert actions.min() >= env.action_low and actions.max() <= env.action_high and actions.std() > 0.5
    best, median = bench_envs.measure("popgym-position-only-pendulum-hard", 3, "cpu", repeats=1, max_steps=10)
    assert best >= median > 0

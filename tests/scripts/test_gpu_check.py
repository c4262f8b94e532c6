"""scripts/gpu_check.py cannot rot: its dry run runs every step (CUDA tests, kernel/PPO/env
benchmarks) tiny on the CPU under the Triton interpreter, and writes nothing into benchmarks/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import gpu_check

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_runs_every_step(tmp_path):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_check", "--dry-run", "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    for step in ("tests", "kernels", "ppo", "envs", "maniskill"):
        assert f"| {step} | ok |" in summary
    kernels = (tmp_path / "kernels.md").read_text()
    for kernel in ("linear_scan", "selective_scan", "lstm", "gru"):
        for impl in ("triton", "naive"):
            assert f"| {kernel} | " in kernels and f"| {impl} | " in kernels
    assert "| parallel | " in kernels and "| cudnn | " in kernels and "| triton-per-channel | " in kernels
    ppo = (tmp_path / "ppo.md").read_text()
    assert "| lstm | " in ppo and "| s5 | " in ppo
    assert "| endless-tmaze | " in (tmp_path / "envs.md").read_text()


def test_dry_run_defaults_to_a_temporary_directory_and_the_real_run_to_benchmarks_gpu():
    output_dir, temporary = gpu_check.output_directory(gpu_check.parse_args(["--dry-run"]))
    try:
        assert REPO_ROOT not in output_dir.parents and output_dir.is_dir()
    finally:
        temporary.cleanup()
    args = gpu_check.parse_args([])
    assert args.output_dir is None and not args.dry_run
    assert gpu_check.peak_bandwidth("NVIDIA H200") == 4800.0 and gpu_check.peak_bandwidth("NVIDIA H100 80GB HBM3") == 3350.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would start the real check")
def test_refuses_to_run_for_real_without_a_gpu(capsys):
    assert gpu_check.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err

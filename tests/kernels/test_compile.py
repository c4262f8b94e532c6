"""Every Triton kernel's default configurations compile for H100/H200 (sm_90a) and A100 (sm_80) on
this CPU machine without a single byte of register spills (the full table of every
configuration is benchmarks/kernels_compile.md). The compiler runs in a subprocess because
tests/conftest.py sets TRITON_INTERPRET, under which nothing is compiled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("architecture", ["sm_90a", "sm_80"])
def test_default_configurations_compile_without_spills(architecture, tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    output = tmp_path / "kernels_compile.md"
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.kernels_compile", "--defaults-only", "--arch", architecture, "--output", str(output)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    table = [line for line in output.read_text().splitlines() if line.startswith(f"| ") and f"| {architecture} |" in line]
    kernels = {line.split(" | ")[1] for line in table}
    assert kernels == {
        f"{op}_{direction}_kernel" for op in ("linear_scan", "selective_scan", "lstm", "gru") for direction in ("fwd", "bwd")
    } | {f"{op}_{direction}_step_kernel" for op in ("lstm", "gru") for direction in ("fwd", "bwd")}
    assert all(line.endswith("| ok |") for line in table)
    # Columns: op, kernel, arch, dtype, configuration, default, registers, spills, shared memory, status.
    cells = [line.split(" | ") for line in table]
    assert all(row[5] == "yes" for row in cells)
    spilling = {f"{row[1]} {row[4]}": row[7] for row in cells if row[7] != "0"}
    assert not spilling, f"default configurations that spill (bytes per thread): {spilling}"

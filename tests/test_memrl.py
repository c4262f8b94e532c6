"""`import memrl`: the README's example runs as written, train() mirrors the CLI, and nothing imports memrl."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import memrl

REPOSITORY = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    readme = (REPOSITORY / "README.md").read_text()
    section = readme.split("## From Python: `import memrl`", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its run dir is relative
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, memrl.TrainResult) and result.global_step == 4_096
    assert result.run_dir == Path("runs/python-example") and (tmp_path / result.run_dir / "eval.json").is_file()
    assert 0.0 <= result.eval["success_rate"] <= 1.0 and result.eval["episodes"] == 8
    assert namespace["config"].backbone == "gru" and namespace["y"].shape == (4, 10, 32)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{result.eval['success_rate']} runs/python-example"


def test_train_takes_the_cli_settings_resumes_and_refuses_bad_ones(tmp_path):
    run_dir = tmp_path / "run"
    first = memrl.train(env="memory-retention", backbone="none", preset="smoke", total_steps=512, eval_episodes=0,
                        run_dir=run_dir, quiet=True, env_options={"corridor_length": 3}, learning_rate=1e-3)
    assert first.eval is None and first.global_step == 512 and first.run_dir == run_dir
    resumed = memrl.train(run_dir=run_dir, resume=True, total_steps=1024, eval_episodes=0, quiet=True)
    assert resumed.global_step == 1024
    assert memrl.load_checkpoint(run_dir)["config"]["run"]["env_options"] == {"corridor_length": 3}
    with pytest.raises(memrl.UsageError, match="unknown setting 'totl_steps'"):
        memrl.train(totl_steps=10)
    with pytest.raises(memrl.UsageError, match="total_steps must be int, got '1000'"):
        memrl.train(total_steps="1000")
    with pytest.raises(memrl.UsageError, match="anneal_lr must be bool, got 1"):
        memrl.train(anneal_lr=1)
    with pytest.raises(memrl.UsageError, match="unknown backbone 'lsmt'"):
        memrl.train(backbone="lsmt")


def test_the_namespace_exposes_backbones_envs_and_agents():
    assert set(memrl.BACKBONES) >= {"gru", "s5", "none"} and "memory-rewrite" in memrl.env_names()
    env = memrl.make_env("memory-rewrite", num_envs=2, seed=0)
    obs, info = env.reset()
    assert obs.shape[0] == 2 and bool(info["is_first"].all())
    assert issubclass(memrl.UsageError, ValueError) and issubclass(memrl.CheckpointError, memrl.ArtifactError)
    assert all(hasattr(memrl, name) for name in memrl.__all__)
    backbone = memrl.make_backbone("gru", input_dim=3, hidden_dim=5)
    y, _ = backbone(torch.zeros(2, 4, 3), backbone.initial_state(2), torch.zeros(2, 4, dtype=torch.bool))
    assert y.shape == (2, 4, 5)


def test_the_cli_is_a_thin_layer_over_train(monkeypatch):
    import agents.train

    calls = []
    monkeypatch.setattr(agents.train, "train", lambda **settings: calls.append(settings))
    assert agents.train.main(["--backbone", "s5", "--total-steps", "64", "--resume", "--run-dir", "somewhere"]) == 0
    (settings,) = calls
    assert settings["backbone"] == "s5" and settings["total_steps"] == 64 and settings["resume"] is True
    assert settings["run_dir"] == "somewhere" and settings["env"] is None  # not given: the preset decides
    assert memrl.train.__module__ == "agents.train"  # the function the CLI calls


def test_nothing_imports_memrl():
    """DESIGN.md: memrl imports agents, memory and envs; none of the library's packages imports memrl."""
    offenders = []
    for package in ("agents", "memory", "envs", "kernels", "scripts"):
        for path in (REPOSITORY / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(REPOSITORY)}: {name}" for name in names
                              if name == "memrl" or name.startswith("memrl.")]
    assert offenders == []

"""Data-parallel PPO under torchrun: two CPU processes (gloo) train one agent.

The runs go through `python -m torch.distributed.run ... -m <module> <train-agent flags>`. Where the
test must see inside each rank, the module is this file run as a script (the probe at the bottom):
it calls `agents.train.main` unchanged, after wrapping `PPOTrainer.train` to save each rank's
weights and statistics and keep a copy of each checkpoint, and `agents.run.write_atomically` to
log which rank wrote which file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.run import load_checkpoint
from agents.train import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--preset", "smoke", "--env", "tmaze", "--backbone", "gru", "--quiet", "--torch-threads", "1",
         "--total-steps", "1024"]
# smoke: 8 envs (4 per rank), 32 steps per rollout, a checkpoint every 2 updates -> 4 updates of 2 x 4 x 32 steps.
UPDATES, STEPS_PER_UPDATE = 4, 2 * 4 * 32


def torchrun(module: str, *args: str, probe_dir: Path | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if probe_dir is not None:
        env["MEMRL_TEST_PROBE_DIR"] = str(probe_dir)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", module, *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted two-process smoke run with the probe: (run dir, probe dir, the process's stderr)."""
    root = tmp_path_factory.mktemp("ddp")
    result = torchrun("tests.agents.test_distributed", *SMOKE, "--run-dir", str(root / "run"),
                      probe_dir=root / "probe")
    return root / "run", root / "probe", result.stderr


def test_ranks_start_from_and_keep_identical_weights(full_run):
    run_dir, probe, _ = full_run
    initial = [torch.load(probe / f"initial_rank{rank}.pt") for rank in (0, 1)]
    final = [torch.load(probe / f"final_rank{rank}.pt") for rank in (0, 1)]
    checkpoint = load_checkpoint(run_dir)["agent"]
    for name, value in final[0]["agent"].items():
        torch.testing.assert_close(initial[1]["agent"][name], initial[0]["agent"][name], rtol=0, atol=0)
        torch.testing.assert_close(final[1]["agent"][name], value, rtol=0, atol=0, msg=f"ranks differ in {name}")
        torch.testing.assert_close(checkpoint[name], value, rtol=0, atol=0)
    assert any(not torch.equal(final[0]["agent"][name], value) for name, value in initial[0]["agent"].items())
    assert final[0]["statistics"] == final[1]["statistics"] and final[0]["statistics"]["episodes"] > 0


def test_rank_zero_alone_writes_the_run_dir(full_run):
    run_dir, probe, stderr = full_run
    assert not (probe / "writes_rank1.txt").exists()
    writes = (probe / "writes_rank0.txt").read_text().split()
    assert sorted(writes) == ["checkpoint.pt"] * (UPDATES // 2) + ["config.json", "eval.json"]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert stderr.count("train-agent: eval over 8 episodes") == 1


def test_global_step_counts_the_steps_of_every_rank(full_run):
    run_dir, probe, _ = full_run
    payload = load_checkpoint(run_dir)
    assert payload["update"] == UPDATES and payload["global_step"] == UPDATES * STEPS_PER_UPDATE
    assert [torch.load(probe / f"final_rank{rank}.pt")["global_step"] for rank in (0, 1)] == [payload["global_step"]] * 2
    ranks = payload["ranks"]
    assert [rank["carry"]["obs"].shape[0] for rank in ranks] == [4, 4]
    assert not torch.equal(ranks[0]["env"]["generator_state"], ranks[1]["env"]["generator_state"])
    assert json.loads((run_dir / "eval.json").read_text())["global_step"] == UPDATES * STEPS_PER_UPDATE


def test_a_run_resumed_from_its_first_checkpoint_equals_the_uninterrupted_run(full_run, tmp_path):
    run_dir, probe, _ = full_run
    shutil.copy(probe / "checkpoint_update2.pt", tmp_path / "checkpoint.pt")  # what a run killed after update 2 leaves
    assert load_checkpoint(tmp_path)["update"] == 2
    torchrun("agents.train", "--resume", "--run-dir", str(tmp_path), "--quiet", "--torch-threads", "1")
    resumed, uninterrupted = load_checkpoint(tmp_path), load_checkpoint(run_dir)
    assert resumed["global_step"] == uninterrupted["global_step"]
    for name, value in uninterrupted["agent"].items():
        torch.testing.assert_close(resumed["agent"][name], value, rtol=0, atol=0, msg=f"parameter {name} differs")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-envs", "7"], "--num-envs (7) must be divisible by the number of torchrun processes (2)"),
        (["--num-envs", "6", "--num-minibatches", "2"],
         "the envs per process (6 / 2 = 3) must be divisible by --num-minibatches (2)"),
        (["--agent", "dreamer"], "data-parallel training under torchrun is implemented for --agent ppo only"),
    ],
    ids=["envs-per-process", "minibatches-per-process", "dreamer"],
)
def test_a_split_that_does_not_fit_is_refused_before_the_process_group_starts(tmp_path, monkeypatch, capsys,
                                                                               args, message):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["--env", "tmaze", "--run-dir", str(tmp_path / "run"), "--quiet", *args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not torch.distributed.is_initialized()


def probe(argv: list[str]) -> int:
    """Run `train-agent` with each rank's weights, statistics, file writes and rank 0's checkpoints
    kept in $MEMRL_TEST_PROBE_DIR."""
    import agents.run
    from agents.ppo import PPOTrainer

    probe_dir = Path(os.environ["MEMRL_TEST_PROBE_DIR"])
    probe_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ["RANK"])
    write_atomically, train = agents.run.write_atomically, PPOTrainer.train

    def logged_write(path, data):
        with open(probe_dir / f"writes_rank{rank}.txt", "a") as log:
            log.write(Path(path).name + "\n")
        write_atomically(path, data)

    def keep_checkpoint(trainer, metrics):
        if rank == 0 and trainer.update % trainer.config.checkpoint_every == 0:
            shutil.copy(trainer.run_dir / "checkpoint.pt", probe_dir / f"checkpoint_update{trainer.update}.pt")

    def recorded_train(trainer, checkpoint_extra=None, on_update=None):
        torch.save({"agent": trainer.agent.state_dict()}, probe_dir / f"initial_rank{rank}.pt")
        metrics = train(trainer, checkpoint_extra, on_update=keep_checkpoint)
        torch.save({"agent": trainer.agent.state_dict(), "statistics": trainer.statistics.state_dict(),
                    "global_step": trainer.global_step}, probe_dir / f"final_rank{rank}.pt")
        return metrics

    agents.run.write_atomically = logged_write
    PPOTrainer.train = recorded_train
    return main(argv)


if __name__ == "__main__":
    sys.exit(probe(sys.argv[1:]))

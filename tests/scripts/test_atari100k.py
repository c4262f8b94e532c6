"""atari100k: human-normalised scores and aggregates against hand-computed values, budget labels,
bad input, and a tiny end-to-end suite on Pong."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from scripts.atari100k import (
    aggregate,
    budget_shortfalls,
    hns_matrix,
    human_normalized_score,
    main,
    published_aggregates,
)

RANDOM_HUMAN = {"pong": (-20.7, 14.6), "boxing": (0.1, 12.1), "breakout": (1.7, 30.5)}


def record(game: str, seed: int, hns: float) -> dict:
    """A runs.csv record whose score has the given HNS, computed from the reference's random and human scores."""
    random_score, human_score = RANDOM_HUMAN[game]
    score = random_score + hns * (human_score - random_score)
    return {"game": game, "agent": "ppo", "backbone": "gru", "seed": seed, "score": score,
            "hns": human_normalized_score(game, score), "reduced": ""}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_human_normalised_scores_use_the_reference_random_and_human_scores():
    assert human_normalized_score("pong", -20.7) == 0.0
    assert human_normalized_score("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized_score("pong", 0.0) == pytest.approx(20.7 / 35.3)
    assert human_normalized_score("boxing", 6.1) == pytest.approx(0.5)
    assert human_normalized_score("boxing", 82.0) == pytest.approx(81.9 / 12.0)


def test_aggregates_match_hand_computed_mean_median_and_iqm():
    # HNS per seed: pong [0, 1], boxing [1, 3], breakout [5, 9] (and a third pong seed, left out so the
    # seed x game matrix is complete). Game means 0.5, 2, 7 -> median 2; mean of all six = 19 / 6;
    # IQM drops int(0.25 * 6) = 1 score from each end of [0, 1, 1, 3, 5, 9] -> mean of [1, 1, 3, 5] = 2.5.
    records = [record("pong", 1, 0.0), record("pong", 2, 1.0), record("pong", 3, 4.0),
               record("boxing", 2, 3.0), record("boxing", 1, 1.0),
               record("breakout", 1, 5.0), record("breakout", 2, 9.0)]
    matrix, game_names = hns_matrix(records)
    assert game_names == ["pong", "boxing", "breakout"]
    np.testing.assert_allclose(matrix, [[0.0, 1.0, 5.0], [1.0, 3.0, 9.0]], atol=1e-12)
    (row,) = aggregate(records)
    assert (row["games"], row["seeds"], row["budget"]) == (3, 2, "protocol")
    assert row["hns_mean"] == pytest.approx(19 / 6)
    assert row["hns_median"] == pytest.approx(2.0)
    assert row["hns_iqm"] == pytest.approx(2.5)
    for name in ("hns_mean", "hns_median", "hns_iqm"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]
    assert row["hns_mean_low"] < row["hns_mean_high"]


def test_published_aggregates_over_pong_and_boxing():
    # DreamerV3: Pong -4.0 -> 16.7 / 35.3; Boxing 82.0 -> 81.9 / 12.0.
    dreamer = published_aggregates(["pong", "boxing"])["DreamerV3"]
    expected = (16.7 / 35.3 + 81.9 / 12.0) / 2
    assert dreamer["mean"] == pytest.approx(expected)
    assert dreamer["median"] == pytest.approx(expected)
    assert dreamer["iqm"] == pytest.approx(expected)  # int(0.25 * 2) = 0 scores dropped
    assert published_aggregates(["pong"])["IRIS"]["mean"] == pytest.approx(1.0)  # IRIS's Pong is the human score


def test_a_budget_below_the_protocol_says_what_was_reduced():
    assert budget_shortfalls(100_000, 100, 108_000) == []
    shortfalls = budget_shortfalls(256, 2, 800)
    assert len(shortfalls) == 3
    assert "256 agent steps" in shortfalls[0] and "2 evaluation episodes" in shortfalls[1]
    assert "800 frames = 200 agent steps" in shortfalls[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--games", "pongg"], "unknown Atari100k game 'pongg'; choose all or from: alien"),
        (["--seeds", "0"], "--seeds must be 1 or more, got 0"),
        (["--total-steps", "-1"], "--total-steps must be 1 or more"),
        (["--backbones", "lsmt"], "unknown backbone 'lsmt'"),
        (["--train-arg", "env=memory-rewrite"], "which the suite sets itself"),
        (["--env-options", '{"colour": 1}'], "unknown Atari100k env option 'colour'"),
        (["--earlier-runs", "no/such/runs.csv"], "--earlier-runs no/such/runs.csv cannot be read"),
    ],
    ids=["game", "seeds", "budget", "backbone", "train-arg", "env-option", "earlier-runs"],
)
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--study-dir", str(tmp_path / "study"), "--dry-run"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()


TINY = ["--games", "pong", "--seeds", "1", "--total-steps", "128", "--eval-episodes", "1",
        "--max-episode-frames", "240", "--train-arg", "num_envs=4", "--train-arg", "num_steps=32",
        "--train-arg", "hidden_dim=16", "--train-arg", "num_minibatches=2", "--train-arg", "update_epochs=1"]


def test_a_tiny_suite_on_pong_writes_scored_and_labelled_results_and_resumes(tmp_path, capsys):
    study, output = tmp_path / "study", tmp_path / "out"
    arguments = [*TINY, "--study-dir", str(study), "--output-dir", str(output)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    run_dir = study / "atari100k-pong" / "ppo__gru" / "seed1"
    assert (run_dir / "eval.json").exists() and (run_dir / "train.log").exists()
    assert "REDUCED budget: 128 agent steps" in printed and "games capped at 240 frames" in printed
    assert "| pong | -20.7 | 14.6 |" in printed and "DreamerV3 | STORM | DIAMOND | IRIS | TWM" in printed

    (run,) = read_csv(output / "runs.csv")
    assert (run["game"], run["agent"], run["backbone"], run["budget"]) == ("pong", "ppo", "gru", "REDUCED")
    assert int(run["agent_steps"]) == 128 and int(run["eval_episodes"]) == 1 and int(run["max_episode_frames"]) == 240
    assert float(run["hns"]) == pytest.approx((float(run["score"]) + 20.7) / 35.3, abs=1e-5)
    (result,) = read_csv(output / "results.csv")
    assert result["budget"] == "REDUCED" and "128 agent steps" in result["reduced"]
    assert float(result["hns_iqm"]) == pytest.approx(float(run["hns"]), abs=1e-5)
    markdown = (output / "results.md").read_text()
    assert markdown.startswith("# Atari100k (REDUCED budget)") and "not comparable with published" in markdown
    assert "| ppo + gru | 1 | 1 | REDUCED |" in markdown
    assert not list(output.glob(".*.tmp"))

    eval_bytes = (run_dir / "eval.json").read_bytes()
    assert main(arguments) == 0
    assert "1 runs: 0 new, 0 to resume, 1 done" in capsys.readouterr().out
    assert (run_dir / "eval.json").read_bytes() == eval_bytes

    (run_dir / "eval.json").unlink()
    assert main([*arguments, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("resume pong ppo__gru seed1")


EARLIER_RUNS = """game,agent,backbone,seed,score,score_std,hns,budget,reduced,agent_steps,frames,eval_episodes,max_episode_frames,preset,train_wall_time_seconds,run_dir
pong,ppo,gru,1,-3.05,2.5,0,protocol,,100000,400000,100,108000,atari100k,900.5,/elsewhere/pong
boxing,ppo,gru,1,6.1,3,0,protocol,,100000,400000,100,108000,atari100k,800,/elsewhere/boxing
"""


def test_earlier_runs_score_a_suite_whose_run_dirs_are_on_another_machine(tmp_path, capsys):
    earlier = tmp_path / "earlier.csv"
    earlier.write_text(EARLIER_RUNS)
    output = tmp_path / "out"
    assert main(["--games", "pong", "boxing", "breakout", "--seeds", "1", "--study-dir", str(tmp_path / "study"),
                 "--output-dir", str(output), "--aggregate-only", "--earlier-runs", str(earlier)]) == 0
    runs = read_csv(output / "runs.csv")
    assert [(run["game"], run["run_dir"]) for run in runs] == [("boxing", "/elsewhere/boxing"), ("pong", "/elsewhere/pong")]
    hns = {run["game"]: float(run["hns"]) for run in runs}
    assert hns == pytest.approx({"pong": (-3.05 + 20.7) / 35.3, "boxing": (6.1 - 0.1) / 12.0}, abs=1e-5)
    (result,) = read_csv(output / "results.csv")
    assert result["games"] == "2" and result["budget"] == "protocol"
    assert float(result["hns_mean"]) == pytest.approx(np.mean(list(hns.values())), abs=1e-5)
    markdown = (output / "results.md").read_text()
    assert "- runs finished: 2 of 3" in markdown and "- 2 of them scored from --earlier-runs" in markdown
    capsys.readouterr()
    assert main(["--games", "pong", "breakout", "--seeds", "1", "--study-dir", str(tmp_path / "study"),
                 "--earlier-runs", str(earlier), "--dry-run"]) == 0
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [["new", "breakout"], ["earlier", "pong"]]


def test_earlier_runs_without_a_needed_column_are_refused_in_one_sentence(tmp_path, capsys):
    earlier = tmp_path / "earlier.csv"
    earlier.write_text(EARLIER_RUNS.replace("score_std,", "spread,"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--games", "pong", "--study-dir", str(tmp_path / "study"), "--aggregate-only",
              "--earlier-runs", str(earlier)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"atari100k: error: --earlier-runs {earlier} has no 'score_std' column; "
                                       "give a runs.csv this script wrote\n")

"""Memory probes: the probe trainer, the labels recorded along a rollout, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from envs.endless_tmaze import FORWARD, RIGHT, EndlessTMaze
from envs.popgym import RepeatFirst, RepeatPrevious
from envs.tmaze import LEFT, TMaze
from scripts.memory_probes import (
    COLUMNS,
    Recording,
    SequenceRecording,
    UsageError,
    choose_l2,
    informative_rows,
    main,
    majority_baseline,
    plot,
    probe_rows,
    record_rollout,
    record_sequence_rollout,
    sequence_probe_rows,
    state_features,
    train_probe,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def split(features: torch.Tensor, labels: torch.Tensor, train: int):
    return features[:train], labels[:train], features[train:], labels[train:]


def test_probe_recovers_a_planted_linear_label():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (600,), generator=generator)
    features = torch.randn(600, 24, generator=generator)
    features[:, 5] += 5.0 * (2 * labels - 1)  # separable up to 5 standard deviations of noise
    accuracy, train_accuracy = train_probe(*split(features, labels, 450))
    assert accuracy > 0.99 and train_accuracy > 0.99


def test_probe_stays_near_chance_on_random_features():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2000, 24, generator=generator)
    labels = torch.randint(2, (2000,), generator=generator)
    accuracy, _ = train_probe(*split(features, labels, 1000))
    assert 0.44 < accuracy < 0.56


def test_probe_without_features_predicts_the_train_majority():
    labels = torch.tensor([1, 1, 1, 0, 1, 0, 0, 1])
    accuracy, train_accuracy = train_probe(*split(torch.zeros(8, 0), labels, 4))
    assert accuracy == pytest.approx(2 / 4) and train_accuracy == pytest.approx(3 / 4)


def test_l2_is_chosen_on_validation_episodes():
    generator = torch.Generator().manual_seed(2)
    labels = (torch.rand(200, generator=generator) < 0.25).long()
    features = torch.randn(200, 4, generator=generator)
    features[:, 0] += 3.0 * (2 * labels - 1)
    episode = torch.arange(200)
    # A huge penalty leaves the bias alone to decide, which answers the majority class (~75%).
    assert choose_l2(features, labels, episode, [1e3, 1e-3]) == 1e-3
    assert choose_l2(torch.zeros(200, 0), labels, episode, [1e-3, 1e3]) == 1e3  # a tie: the stronger penalty


def test_state_features_flatten_nested_complex_and_mask_entries():
    state = {"b": {"z": torch.tensor([[1 + 2j], [3 + 4j]])}, "a": torch.arange(8.0).reshape(2, 2, 2),
             "mask": torch.tensor([[True], [False]])}
    assert state_features(state, 2).tolist() == [[0, 1, 2, 3, 1, 2, 1], [4, 5, 6, 7, 3, 4, 0]]
    assert state_features({"deter": {}}, 3).shape == (3, 0)


WRONG_TURN = -1
"""A scripted action: the turn away from the env's current cue."""
WRONG_SUIT = -2
"""A scripted action on a card game: the suit after the oracle's answer."""


class ScriptedAgent:
    """Plays each env's scripted actions, then the oracle's; its state is the observation it just read
    and how many it has read, so the recorded features show what the labels were aligned with."""

    def __init__(self, env, scripts: list[list[int]]):
        self.env, self.scripts, self.steps = env, scripts, 0

    def initial_state(self, batch_size: int, device=None) -> dict:
        return {"count": torch.zeros(batch_size, 1), "obs": torch.zeros(batch_size, self.env.obs_dim)}

    def act(self, obs, state, is_first, deterministic):
        assert deterministic
        action = self.env.oracle_action()
        for index, script in enumerate(self.scripts):
            if self.steps < len(script):
                scripted = script[self.steps]
                if scripted == WRONG_TURN:
                    scripted = RIGHT - self.env.cue[index]
                elif scripted == WRONG_SUIT:
                    scripted = (action[index] + 1) % 4
                action[index] = scripted
        self.steps += 1
        return action, {"count": state["count"] + 1, "obs": obs.clone()}


def rows_of(recording, episode: int) -> dict[str, list]:
    keep = recording.episode == episode
    return {"count": recording.features[keep, 0].long().tolist(), "obs": recording.features[keep, 1:],
            "steps_since_cue": recording.steps_since_cue[keep].tolist(), "cue": recording.cue[keep].tolist(),
            "corridor": recording.corridor[keep].tolist(), "earlier_cues": recording.earlier_cues[keep].tolist()}


def test_endless_tmaze_labels_follow_corridors_and_stop_after_the_first_episode():
    env = EndlessTMaze(num_envs=2, seed=3, num_corridors=3, corridor_length=2)
    # env 0: the oracle passes three corridors (9 observations); env 1 turns wrong at its first junction.
    agent = ScriptedAgent(env, [[], [FORWARD, FORWARD, WRONG_TURN]])
    recording = record_rollout(agent, env, max_k=2, depth=2)
    oracle = rows_of(recording, 0)
    cues = [int(oracle["obs"][t, 2]) for t in (0, 3, 6)]  # obs = [x / L, cue_left, cue_right], cue shown at x = 0
    assert oracle["count"] == list(range(1, 10))
    assert oracle["obs"][:, 0].tolist() == [0.0, 0.5, 1.0] * 3
    assert oracle["steps_since_cue"] == [0, 1, 2] * 3
    assert oracle["corridor"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert oracle["cue"] == [cues[0]] * 3 + [cues[1]] * 3 + [cues[2]] * 3
    assert oracle["earlier_cues"] == [[-1, -1]] * 3 + [[cues[0], -1]] * 3 + [[cues[1], cues[0]]] * 3
    wrong = rows_of(recording, 1)
    assert wrong["count"] == [1, 2, 3]  # its second episode is not recorded
    assert wrong["steps_since_cue"] == [0, 1, 2] and wrong["corridor"] == [0, 0, 0]
    assert wrong["cue"] == [int(wrong["obs"][0, 2])] * 3 and wrong["earlier_cues"] == [[-1, -1]] * 3
    assert recording.success_rate == 0.5


def test_tmaze_labels_count_steps_since_the_cue_including_stalls():
    env = TMaze(num_envs=1, seed=4, corridor_length=3)
    agent = ScriptedAgent(env, [[LEFT, FORWARD, FORWARD, FORWARD]])
    recording = record_rollout(agent, env, max_k=3)
    rows = rows_of(recording, 0)
    cue = int(rows["obs"][0, 2])  # obs = [x / L, cue_left, cue_right, at_junction]
    assert rows["count"] == [1, 2, 3, 4]
    assert rows["obs"][:, 0].tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3])
    assert rows["steps_since_cue"] == [0, 1, 2, 3]
    assert rows["cue"] == [cue] * 4 and rows["corridor"] == [0] * 4 and rows["earlier_cues"] == [[-1]] * 4
    assert recording.success_rate == 1.0


def test_superseded_probes_read_each_earlier_corridor_only_where_the_episode_has_it():
    # 200 episodes of 4 corridors, one step each; the state holds the current cue and the one 1 corridor
    # back (as +-1 features plus noise), nothing of the cues 2 or 3 back.
    generator = torch.Generator().manual_seed(5)
    episodes, corridors = 200, 4
    cues = torch.randint(2, (episodes, corridors), generator=generator)
    corridor = torch.arange(corridors).repeat(episodes)
    episode = torch.arange(episodes).repeat_interleave(corridors)
    cue = cues.flatten()
    earlier = torch.stack([torch.where(corridor >= back, cues[episode, (corridor - back).clamp(min=0)], -1)
                           for back in (1, 2, 3)], dim=1)
    features = torch.randn(len(cue), 6, generator=generator)
    features[:, 0] += 4.0 * (2 * cue - 1)
    features[:, 1] += 4.0 * (2 * earlier[:, 0].clamp(min=0) - 1)
    recording = Recording(features=features, episode=episode, steps_since_cue=torch.zeros_like(cue), cue=cue,
                          corridor=corridor, earlier_cues=earlier, success_rate=1.0)
    rows = probe_rows(recording, train_episodes=150, ks=[0], l2_grid=[1e-3])
    by_probe = {(row["probe"], row["corridors_back"]): row for row in rows}
    assert sorted(by_probe) == [("current", 0), ("retention", 0), ("superseded", 1), ("superseded", 2),
                                ("superseded", 3)]
    assert [by_probe["superseded", back]["test_samples"] for back in (1, 2, 3)] == [150, 100, 50]
    assert by_probe["current", 0]["accuracy"] > 0.97 and by_probe["superseded", 1]["accuracy"] > 0.97
    assert by_probe["superseded", 2]["accuracy"] < 0.7 and by_probe["superseded", 3]["accuracy"] < 0.75
    labelled = [{"label": "synthetic", **row} for row in rows]
    assert plot(labelled, ["synthetic"], "three panels").startswith(b"\x89PNG")


@pytest.mark.parametrize("env_class, options", [(RepeatPrevious, {"k": 4}), (RepeatFirst, {})])
def test_sequence_labels_are_the_suits_shown_k_steps_back_from_max_k_on(env_class, options):
    env = env_class(num_envs=3, seed=6, **options)
    agent = ScriptedAgent(env, [[], [WRONG_SUIT] * 5, [1, WRONG_SUIT, 0, WRONG_SUIT, 2]])  # then the oracle's
    recording = record_sequence_rollout(agent, env, max_k=5, record_every=1)
    length = env.max_episode_steps
    for episode in range(3):
        keep = recording.episode == episode
        count = recording.features[keep, 0].long()
        shown_now = recording.features[keep, 1:].argmax(1)  # the agent's state holds the observation it read
        shown = recording.shown[keep]
        assert recording.step[keep].tolist() == list(range(5, length)) and count.tolist() == list(range(6, length + 1))
        assert shown[:, 0].tolist() == shown_now.tolist()
        for k in range(1, 6):
            assert shown[k:, k].tolist() == shown_now[:-k].tolist()  # column k is the row k steps earlier
    assert recording.success_rate == pytest.approx(1 / 3)  # only the env that never left the oracle succeeds
    sparse = record_sequence_rollout(ScriptedAgent(env, []), env, max_k=5, record_every=20)
    assert sorted(set(sparse.step.tolist())) == list(range(5, length, 20))
    with pytest.raises(UsageError, match="--max-k 60 is not below the episode length"):
        record_sequence_rollout(ScriptedAgent(env, []), env, max_k=60, record_every=1)


def test_sequence_probes_read_the_suits_the_state_holds_and_not_the_others():
    # 300 episodes, 3 states each; the state holds the suit shown 0 and 1 steps back (one-hot plus noise),
    # nothing of the one 2 steps back.
    generator = torch.Generator().manual_seed(7)
    states = 900
    shown = torch.randint(4, (states, 3), generator=generator)
    features = torch.randn(states, 10, generator=generator)
    features[:, :4] += 4.0 * F.one_hot(shown[:, 0], 4)
    features[:, 4:8] += 4.0 * F.one_hot(shown[:, 1], 4)
    recording = SequenceRecording(features=features, episode=torch.arange(300).repeat_interleave(3),
                                  step=torch.arange(3).repeat(300), shown=shown, success_rate=0.0)
    rows = sequence_probe_rows(recording, train_episodes=225, ks=[0, 1, 2], l2_grid=[1e-3, 1e-1])
    assert [(row["probe"], row["k"], row["train_samples"], row["test_samples"]) for row in rows] == [
        ("retention", k, 675, 225) for k in (0, 1, 2)]
    assert rows[0]["accuracy"] > 0.97 and rows[1]["accuracy"] > 0.97 and rows[2]["accuracy"] < 0.4
    assert all(row["chance"] == 0.25 and 0.0 < row["majority_baseline"] < 0.5 for row in rows)


def train_tiny(run_dir, env: str):
    result = subprocess.run(
        [sys.executable, "-m", "agents.train", "--preset", "smoke", "--env", env, "--backbone", "gru",
         "--run-dir", str(run_dir), "--total-steps", "1024", "--eval-episodes", "0", "--torch-threads", "1", "--quiet"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("probes") / "tmaze-gru", "tmaze")


def test_probes_of_a_trained_run_are_written(tiny_run, tmp_path):
    out_dir = tmp_path / "out"
    assert main([str(tiny_run), "--out-dir", str(out_dir), "--episodes", "48", "--l2", "1e-2", "1.0",
                 "--torch-threads", "0"]) == 0
    with open(out_dir / "probes.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert [int(row["k"]) for row in rows] == list(range(11))  # retention only, k = 0 .. corridor length 10
    assert all(row["probe"] == "retention" and row["backbone"] == "gru" for row in rows)
    assert all(0.0 <= float(row[name]) <= 1.0 for row in rows for name in ("accuracy", "train_accuracy"))
    assert all(int(row["train_samples"]) == 36 and int(row["test_samples"]) == 12 for row in rows)
    report = json.loads((out_dir / "probes.json").read_text())
    assert report["runs"][0]["backbone"] == "gru" and report["runs"][0]["feature_dim"] == 16
    assert len(report["probes"]) == len(rows)
    assert (out_dir / "probes.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in out_dir.iterdir()) == ["probes.csv", "probes.json", "probes.png"]


def test_probes_at_every_k_step_th_k_keep_the_junction(tiny_run, tmp_path):
    out_dir = tmp_path / "out"
    assert main([str(tiny_run), "--out-dir", str(out_dir), "--episodes", "16", "--l2", "1.0", "--k-step", "4"]) == 0
    with open(out_dir / "probes.csv", newline="") as handle:
        assert [int(row["k"]) for row in csv.DictReader(handle)] == [0, 4, 8, 10]


def test_probes_of_a_repeat_previous_run_read_suits_up_to_twice_the_answers_lag(tmp_path):
    run_dir = train_tiny(tmp_path / "repeat-previous-gru", "popgym-repeat-previous-easy")
    out_dir = tmp_path / "out"
    assert main([str(run_dir), "--out-dir", str(out_dir), "--episodes", "16", "--l2", "1.0", "--k-step", "4",
                 "--record-every", "10"]) == 0
    with open(out_dir / "probes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # k = 4: the answer's lag is 3, so k runs to 6; states at steps 6, 16, .., 46 of the 51-step episodes.
    assert [int(row["k"]) for row in rows] == [0, 4, 6]
    assert all(row["probe"] == "retention" and float(row["chance"]) == 0.25 for row in rows)
    assert all(int(row["train_samples"]) == 12 * 5 and int(row["test_samples"]) == 4 * 5 for row in rows)
    report = json.loads((out_dir / "probes.json").read_text())
    assert report["settings"]["chance"] == 0.25 and report["runs"][0]["max_k"] == 6
    assert (out_dir / "probes.png").read_bytes().startswith(b"\x89PNG")


def fake_run(path, env: str):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"run": {"env": env, "backbone": "gru", "agent": "ppo"}}))
    (path / "checkpoint.pt").write_bytes(b"")
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("other-env", "was trained on 'color-cubes'; memory probes need a T-maze, Endless T-Maze or POPGym"),
    ("mixed-tasks", "are on different tasks"),
    ("episodes", "--episodes must be at least 2"),
    ("k-step", "--k-step must be 1 or more, got 0"),
    ("depth", "--superseded-depth must be 1 or more, got 0"),
    ("record-every", "--record-every must be 1 or more, got 0"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, capsys, case, message):
    arguments = {
        "missing": [str(tmp_path / "nowhere")],
        "other-env": [str(fake_run(tmp_path / "cubes", "color-cubes"))],
        "mixed-tasks": [str(fake_run(tmp_path / "a", "memory-retention")),
                        str(fake_run(tmp_path / "b", "memory-rewrite"))],
        "episodes": [str(fake_run(tmp_path / "c", "tmaze")), "--episodes", "1"],
        "k-step": [str(fake_run(tmp_path / "d", "tmaze")), "--k-step", "0"],
        "depth": [str(fake_run(tmp_path / "e", "endless-tmaze")), "--superseded-depth", "0"],
        "record-every": [str(fake_run(tmp_path / "f", "popgym-repeat-previous-medium")), "--record-every", "0"],
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_majority_baseline_scores_the_most_frequent_train_label_on_the_test_split():
    assert majority_baseline(torch.tensor([1, 1, 0]), torch.tensor([1, 1, 1, 0])) == 0.75
    assert majority_baseline(torch.tensor([0, 0]), torch.tensor([1, 1])) == 0.0


def test_rows_whose_test_cues_are_all_one_are_not_informative():
    rows = [{"probe": "superseded", "majority_baseline": baseline} for baseline in (1.0, 0.0, 0.52, 0.9)]
    assert [row["majority_baseline"] for row in informative_rows(rows)] == [0.52, 0.9]

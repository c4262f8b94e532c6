"""POPGym card tasks (envs/popgym.py): rules, reward scale, chance levels, determinism, equality to popgym 1.0.7.

Statistical margins: a measured rate or mean may exceed its stated value by at most four
standard errors (false-alarm rate about 3e-5 per check), the standard error of a rate being
taken at max(rate, 1/n) so that a chance level of 0 still allows a fluke or two.
"""

from __future__ import annotations

import math
from importlib.util import find_spec

import numpy as np
import pytest
import torch

import scripts.popgym_parity as parity
from envs.popgym import PRESETS, Autoencode, CountRecall, HigherLower, RepeatFirst, RepeatPrevious
from envs.popgym_bandit import MultiarmedBandit
from envs.popgym_battleship import SHIP_SIZES, Battleship
from envs.popgym_cartpole import PositionOnlyCartPole
from envs.popgym_concentration import Concentration
from envs.popgym_labyrinth import Labyrinth
from envs.popgym_minesweeper import MineSweeper
from envs.popgym_pendulum import POPGYM_WORST_REWARD, UPRIGHT_ANGLE, UPRIGHT_SPEED, PositionOnlyPendulum
from scripts.popgym_parity import (
    CARD_PRESETS,
    POLICIES,
    PORTED_PRESETS,
    dealing_env,
    make_policy,
    make_popgym_env,
    play_side_by_side,
)
from scripts.popgym_parity import oracle as oracle_from_history

LEVELED = CARD_PRESETS
EASY = [name for name in LEVELED if name.endswith("-easy")]
NEEDS_MEMORY_TO_SUCCEED = [name for name in LEVELED if not name.startswith("repeat-first")]


def make(name: str, num_envs: int, seed: int = 0, device: str = "cpu"):
    task_class, kwargs = PRESETS[name]
    return task_class(num_envs=num_envs, device=device, seed=seed, **kwargs)


def rollout(env, policy, num_steps: int | None = None) -> dict:
    """Reset `env` and step it `num_steps` times (one episode by default) with policy(env, obs).

    Returns the observations the actions were taken on [N, T, D], actions, rewards,
    terminated and truncated [N, T], and the info of the last step.
    """
    num_steps = env.max_episode_steps if num_steps is None else num_steps
    obs, _ = env.reset()
    record = {"obs": [], "action": [], "reward": [], "terminated": [], "truncated": []}
    for _ in range(num_steps):
        action = policy(env, obs)
        record["obs"].append(obs)
        record["action"].append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        for key, value in zip(("reward", "terminated", "truncated"), (reward, terminated, truncated)):
            record[key].append(value)
    trajectory = {key: torch.stack(values, dim=1) for key, values in record.items()}
    trajectory["info"] = info
    return trajectory


def oracle(env, obs):
    return env.oracle_action()


def memoryless(env, obs):
    return env.memoryless_action(obs)


def always_wrong(env, obs):
    return (env.oracle_action() + 1) % env.num_actions


def random_policy(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda env, obs: torch.randint(env.num_actions, (env.num_envs,), generator=generator)


def margin(values: torch.Tensor) -> float:
    """Four standard errors of the mean of `values` [n], plus float32 rounding of the returns."""
    return 4 * values.float().std().item() / math.sqrt(values.numel()) + 1e-5


def rate_margin(rate: float, n: int) -> float:
    p = max(rate, 1 / n)
    return 4 * math.sqrt(p * (1 - p) / n)


def memoryless_success_rate(env, num_steps: int) -> tuple[float, int]:
    """Success rate of the env's memoryless policy over the episodes that end in `num_steps` steps."""
    obs, _ = env.reset()
    successes = episodes = 0
    for _ in range(num_steps):
        obs, _, _, _, info = env.step(env.memoryless_action(obs))
        successes += int(info["success"][info["episode_done"]].sum())
        episodes += int(info["episode_done"].sum())
    return successes / episodes, episodes


def scored_count(env) -> int:
    if isinstance(env, RepeatPrevious):
        return env.num_cards - env.k
    if isinstance(env, Autoencode):
        return env.num_cards
    return env.num_cards - 1


# -- presets --------------------------------------------------------------------------------


def test_presets_follow_popgym_levels():
    expected = {
        "repeat-first": (RepeatFirst, [{"num_decks": 1}, {"num_decks": 8}, {"num_decks": 16}]),
        "repeat-previous": (RepeatPrevious, [{"num_decks": 1, "k": 4}, {"num_decks": 2, "k": 32}, {"num_decks": 3, "k": 64}]),
        "count-recall": (
            CountRecall,
            [{"num_decks": 1, "num_values": 2}, {"num_decks": 2, "num_values": 4}, {"num_decks": 4, "num_values": 13}],
        ),
        "autoencode": (Autoencode, [{"num_decks": 1}, {"num_decks": 2}, {"num_decks": 3}]),
    }
    expected["popgym-higher-lower"] = (HigherLower, [{"num_decks": 1}, {"num_decks": 2}, {"num_decks": 3}])
    expected["popgym-battleship"] = (Battleship, [{"board_size": 8}, {"board_size": 10}, {"board_size": 12}])
    expected["popgym-mine-sweeper"] = (
        MineSweeper,
        [{"board_size": 4, "num_mines": 2}, {"board_size": 6, "num_mines": 6}, {"board_size": 8, "num_mines": 10}],
    )
    expected["popgym-concentration"] = (
        Concentration,
        [{"num_decks": 1, "num_values": 2}, {"num_decks": 2, "num_values": 2}, {"num_decks": 1, "num_values": 13}],
    )
    expected["popgym-position-only-pendulum"] = (
        PositionOnlyPendulum,
        [{"max_episode_length": length, "noise_sigma": 0.0} for length in (200, 150, 100)],
    )
    expected["popgym-noisy-position-only-pendulum"] = (
        PositionOnlyPendulum,
        [{"max_episode_length": 200, "noise_sigma": sigma} for sigma in (0.1, 0.2, 0.3)],
    )
    assert len(PRESETS) == 16 + 12 + 3 + 3 + 6 + 3 + 3 + 3 + 6 + 6  # ... + Labyrinths (tests/envs/test_popgym_labyrinth.py)
    for task, (task_class, levels) in expected.items():
        if not task.startswith("popgym-"):
            assert PRESETS[task] == PRESETS[f"{task}-easy"]
        for level, kwargs in zip(("easy", "medium", "hard"), levels):
            assert PRESETS[f"{task}-{level}"] == (task_class, kwargs)
            assert PRESETS[f"popgym-{task.removeprefix('popgym-')}-{level}"] == (task_class, kwargs)


@pytest.mark.parametrize(
    "name, obs_dim, num_actions, length",
    [
        ("repeat-first-hard", 4, 4, 831),
        ("repeat-previous-hard", 4, 4, 155),
        ("count-recall-easy", 4, 27, 51),
        ("count-recall-hard", 26, 17, 207),
        ("autoencode-medium", 6, 4, 207),
    ],
)
def test_spaces_and_lengths(name, obs_dim, num_actions, length):
    env = make(name, num_envs=2)
    assert (env.obs_dim, env.num_actions, env.max_episode_steps) == (obs_dim, num_actions, length)
    obs, info = env.reset()
    assert obs.shape == (2, obs_dim) and obs.dtype == torch.float32
    assert env.single_observation_space.contains(obs[0].numpy())
    assert info["is_first"].all()


@pytest.mark.parametrize(
    "task_class, kwargs, message",
    [
        (RepeatFirst, {"num_decks": 0}, "num_decks must be a positive integer"),
        (Autoencode, {"num_decks": 1.5}, "num_decks must be a positive integer"),
        (RepeatPrevious, {"num_decks": 1, "k": 0}, r"k must be an integer in \[1, 51\]"),
        (RepeatPrevious, {"num_decks": 1, "k": 52}, r"k must be an integer in \[1, 51\]"),
        (CountRecall, {"num_values": 3}, "num_values must be 2 .colours., 4 .suits. or 13 .ranks."),
        (CountRecall, {"num_values": 2.0}, "num_values must be 2"),
        (HigherLower, {"num_decks": -1}, "num_decks must be a positive integer"),
        (MultiarmedBandit, {"num_bandits": 0}, "num_bandits must be a positive integer, got 0"),
        (MultiarmedBandit, {"episode_length": 2.5}, "episode_length must be a positive integer, got 2.5"),
        (PositionOnlyCartPole, {"max_episode_length": 0}, "max_episode_length must be a positive integer, got 0"),
        (PositionOnlyCartPole, {"noise_sigma": -0.1}, "noise_sigma must be a number >= 0, got -0.1"),
        (PositionOnlyPendulum, {"max_episode_length": 1.5}, "max_episode_length must be a positive integer, got 1.5"),
        (PositionOnlyPendulum, {"noise_sigma": "0.1"}, "noise_sigma must be a number >= 0, got '0.1'"),
        (Battleship, {"board_size": 3}, r"board_size must be an integer >= 4 \(the longest ship\), got 3"),
        (MineSweeper, {"board_size": 1}, "board_size must be an integer >= 2, got 1"),
        (Concentration, {"num_values": 4}, r"num_values must be 2 \(colours\) or 13 \(ranks\), got 4"),
        (Concentration, {"num_decks": 0}, "num_decks must be a positive integer, got 0"),
        (MineSweeper, {"board_size": 4, "num_mines": 14}, r"num_mines must be an integer in \[1, 13\] \(at least 3 free"),
    ],
)
def test_bad_arguments_are_rejected(task_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        task_class(num_envs=1, **kwargs)


# -- oracle, always wrong, memoryless ------------------------------------------------------------


@pytest.mark.parametrize("name", LEVELED)
def test_oracle_scores_plus_one_and_always_wrong_minus_one(name):
    """Half the envs follow the oracle, half always answer wrong; episodes end by termination."""
    env = make(name, num_envs=16)
    half = torch.arange(16) < 8
    trajectory = rollout(env, lambda env, obs: torch.where(half, oracle(env, obs), always_wrong(env, obs)))
    info = trajectory["info"]
    assert not trajectory["truncated"].any()
    assert not trajectory["terminated"][:, :-1].any() and trajectory["terminated"][:, -1].all()
    assert info["episode_done"].all() and info["is_first"].all()
    assert (info["episode_length"] == env.max_episode_steps).all()
    torch.testing.assert_close(info["episode_return"][half], torch.ones(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(info["episode_return"][~half], -torch.ones(8), atol=1e-4, rtol=0)
    assert info["success"][half].all() and not info["success"][~half].any()
    scored = trajectory["reward"] != 0
    assert scored.sum(1).eq(scored_count(env)).all()
    torch.testing.assert_close(trajectory["reward"][scored].abs(), torch.full((int(scored.sum()),), 1 / scored_count(env)))


@pytest.mark.parametrize("name", LEVELED)
def test_memoryless_policy_does_not_beat_chance(name):
    episodes = 128
    env = make(name, num_envs=episodes, seed=1)
    info = rollout(env, memoryless)["info"]
    success_rate = info["success"].float().mean().item()
    returns = info["episode_return"]
    assert success_rate <= env.chance_success + rate_margin(env.chance_success, episodes)
    assert returns.mean().item() <= env.chance_return + margin(returns)
    if isinstance(env, RepeatFirst):
        # The fixed-suit policy reaches the stated chance success, so 1/4 is not loose.
        assert success_rate >= env.chance_success - rate_margin(env.chance_success, episodes)
    else:
        # Elsewhere memoryless_action is the return-optimal memoryless policy: it reaches chance_return.
        assert returns.mean().item() >= env.chance_return - margin(returns)


@pytest.mark.parametrize("name", ["repeat-first-easy", "repeat-first-medium"])
def test_repeat_first_best_memoryless_return_is_reached(name):
    """Answering the suit shown (right at step 0, slightly likelier than another later) earns chance_return."""
    env = make(name, num_envs=128, seed=2)
    returns = rollout(env, lambda env, obs: obs.argmax(1))["info"]["episode_return"]
    assert abs(returns.mean().item() - env.chance_return) <= margin(returns)


def memoryless_success_log_bound(trajectory: dict) -> torch.Tensor:
    """Per episode, log of the best success probability any memoryless policy has on it [N].

    The actions do not change the cards, so on a given episode a policy p(action | obs) succeeds
    with probability prod over scored steps of p(right answer | obs); for each distinct
    observation o seen with answer a on n_oa steps (n_o in all) the best p is n_oa / n_o, which
    gives sum n_oa log n_oa - sum n_o log n_o. Its mean over episodes bounds the chance success.
    """
    observations, answers, scored = trajectory["obs"], trajectory["action"], trajectory["reward"] != 0
    num_envs, length, obs_dim = observations.shape
    keys = torch.unique(observations.reshape(-1, obs_dim), dim=0, return_inverse=True)[1].reshape(num_envs, length)
    num_answers = int(answers.max()) + 1
    counts = torch.zeros(num_envs, (int(keys.max()) + 1) * num_answers)
    counts.scatter_add_(1, keys * num_answers + answers, scored.float())
    counts = counts.reshape(num_envs, -1, num_answers)
    per_observation = counts.sum(2)
    return torch.xlogy(counts, counts).sum((1, 2)) - torch.xlogy(per_observation, per_observation).sum(1)


@pytest.mark.parametrize("name", NEEDS_MEMORY_TO_SUCCEED)
def test_no_memoryless_policy_can_succeed(name):
    """On every sampled episode no memoryless policy succeeds with probability above 1e-12, so
    (no exception in 64 draws) the best one's success rate is below 1e-12 + 3/64 at 95 %."""
    env = make(name, num_envs=64, seed=3)
    log_bound = memoryless_success_log_bound(rollout(env, oracle))
    assert log_bound.max().item() < math.log(1e-12)


# -- the rules, on hand-built card sequences -------------------------------------------------------


def scripted(task_class, card_classes: list[int], queries: list[int] | None = None, **kwargs):
    """A one-env task whose shoe deals `card_classes` in order (and CountRecall's query shoe `queries`)."""
    order = {"cards_left": card_classes, "queries_left": queries or []}
    return dealing_env(task_class, kwargs, order)


def play(env, answers: list[int]) -> tuple[list[torch.Tensor], list[float], list[int], bool, torch.Tensor]:
    """Reset, answer `answers` in turn -> (observations, rewards, oracle actions, success, final obs)."""
    obs, _ = env.reset()
    observations, rewards, oracle_actions = [], [], []
    for answer in answers:
        observations.append(obs[0])
        oracle_actions.append(int(env.oracle_action()[0]))
        obs, reward, terminated, _, info = env.step(torch.tensor([answer]))
        rewards.append(float(reward[0]))
    assert bool(terminated[0])
    return observations, rewards, oracle_actions, bool(info["success"][0]), info["final_obs"][0]


def shuffled_suits(num_decks: int, seed: int) -> list[int]:
    suits = torch.arange(4).repeat_interleave(13 * num_decks)
    return suits[torch.randperm(len(suits), generator=torch.Generator().manual_seed(seed))].tolist()


def test_repeat_first_rules():
    cards = [2] + [0] * 13 + [1] * 13 + [2] * 12 + [3] * 13
    env = scripted(RepeatFirst, cards, num_decks=1)
    observations, rewards, oracle_actions, success, final_obs = play(env, [2] * 51)
    assert rewards == pytest.approx([1 / 51] * 51) and success and oracle_actions == [2] * 51
    assert [obs.argmax().item() for obs in observations] == cards[:51] and final_obs.tolist() == [0, 0, 0, 1]
    _, rewards, _, success, _ = play(env, cards[:51])  # repeating the card shown is right only for suit 2
    assert rewards == pytest.approx([1 / 51 if suit == 2 else -1 / 51 for suit in cards[:51]]) and not success


@pytest.mark.parametrize("k", [1, 4, 7])
def test_repeat_previous_scores_the_kth_most_recent_card(k):
    """popgym's k: the card shown is the first most recent, so k = 4 asks for the card 3 steps back."""
    cards = shuffled_suits(1, seed=k)
    env = scripted(RepeatPrevious, cards, num_decks=1, k=k)
    answers = [0] * (k - 1) + cards[: 52 - k]
    observations, rewards, oracle_actions, success, final_obs = play(env, answers)
    assert [obs.argmax().item() for obs in observations] == cards[:51] and final_obs.argmax().item() == cards[51]
    assert rewards == pytest.approx([0.0] * (k - 1) + [1 / (52 - k)] * (52 - k)) and success
    assert oracle_actions[k - 1 :] == cards[: 52 - k]
    one_step_too_far = [0] * k + cards[: 51 - k]  # memrl's former lag
    _, rewards, _, success, _ = play(env, one_step_too_far)
    expected = [0.0] * (k - 1) + [1 / (52 - k) if a == b else -1 / (52 - k) for a, b in zip(one_step_too_far[k - 1 :], cards)]
    assert rewards == pytest.approx(expected) and not success
    periodic = scripted(RepeatPrevious, [0, 1, 2, 3] * 13, num_decks=1, k=5)
    _, rewards, _, success, _ = play(periodic, [0, 1, 2, 3] * 12 + [0, 1, 2])  # 4 back is the suit shown now
    assert rewards == pytest.approx([0.0] * 4 + [1 / 47] * 47) and success


def test_autoencode_replays_in_reverse():
    cards = [0] * 13 + [1] * 13 + [2] * 13 + [3] * 13
    env = scripted(Autoencode, cards, num_decks=1)
    reverse = cards[::-1]
    observations, rewards, oracle_actions, success, final_obs = play(env, [1] * 51 + reverse)
    assert all(obs[:2].tolist() == [0, 1] for obs in observations[:51])  # WATCH
    assert [obs[2:].argmax().item() for obs in observations[:52]] == cards
    assert observations[51][:2].tolist() == [1, 0]  # PLAY, shown with the last card
    assert all(obs.tolist() == [1, 0, 1, 0, 0, 0] for obs in observations[52:]) and final_obs.tolist() == [1, 0, 1, 0, 0, 0]
    assert rewards == pytest.approx([0.0] * 51 + [1 / 52] * 52) and success
    assert oracle_actions[51:] == reverse
    _, rewards, _, success, _ = play(env, [0] * 51 + cards)  # forward order is wrong everywhere here
    assert rewards == pytest.approx([0.0] * 51 + [-1 / 52] * 52) and not success
    shuffled = shuffled_suits(1, seed=0)
    _, rewards, _, success, _ = play(scripted(Autoencode, shuffled, num_decks=1), [0] * 51 + shuffled[::-1])
    assert rewards == pytest.approx([0.0] * 51 + [1 / 52] * 52) and success


def test_count_recall_counts_the_queried_value_from_a_query_shoe():
    values = [0, 1] * 26
    queries = [0, 0, 1, 1] * 13
    env = scripted(CountRecall, values, queries, num_decks=1, num_values=2)
    counts = [values[: t + 1].count(queries[t]) for t in range(51)]
    assert counts[:6] == [1, 1, 1, 2, 3, 3] and counts[-1] == 25
    observations, rewards, oracle_actions, success, final_obs = play(env, counts)
    assert [obs[:2].argmax().item() for obs in observations] == values[:51]
    assert [obs[2:].argmax().item() for obs in observations] == queries[:51] and final_obs.tolist() == [0, 1, 0, 1]
    assert rewards == pytest.approx([1 / 51] * 51) and success and oracle_actions == counts
    off_by_one = [count - 1 if count > 0 else 1 for count in counts]  # e.g. not counting this card
    _, rewards, _, success, _ = play(env, off_by_one)
    assert rewards == pytest.approx([-1 / 51] * 51) and not success


@pytest.mark.parametrize("name", LEVELED)
def test_rewards_follow_the_rules_on_random_shoes(name):
    """Answers recomputed in plain Python from the observations alone decide every reward."""
    env = make(name, num_envs=3, seed=4)
    trajectory = rollout(env, random_policy(5))
    scale = 1 / scored_count(env)
    suit_start = 2 if isinstance(env, Autoencode) else 0
    final_obs = trajectory["info"]["final_obs"]
    for obs, actions, rewards, last_obs in zip(trajectory["obs"], trajectory["action"], trajectory["reward"], final_obs):
        shown = obs[:, suit_start : suit_start + env.num_classes].argmax(1).tolist()
        length = env.max_episode_steps
        if isinstance(env, RepeatFirst):
            answers = [shown[0]] * length
        elif isinstance(env, RepeatPrevious):
            answers = [None] * (env.k - 1) + shown[: length - env.k + 1]
        elif isinstance(env, Autoencode):
            shown = shown[: env.num_cards]
            answers = [None] * (env.num_cards - 1) + shown[::-1]
        else:
            queries = obs[:, env.num_values :].argmax(1).tolist() + [last_obs[env.num_values :].argmax().item()]
            answers = [shown[: t + 1].count(queries[t]) for t in range(length)]
            assert all(queries.count(value) == env.cards_per_class for value in range(env.num_classes))
        if not isinstance(env, Autoencode):
            shown.append(last_obs[: env.num_classes].argmax().item())
        # A shoe holds every class equally often and deals it all.
        assert all(shown.count(card_class) == env.cards_per_class for card_class in range(env.num_classes))
        expected = [
            0.0 if answer is None else (scale if action == answer else -scale) for action, answer in zip(actions.tolist(), answers)
        ]
        assert rewards.tolist() == pytest.approx(expected)


# -- side by side with popgym 1.0.7 ---------------------------------------------------------------

needs_popgym = pytest.mark.skipif(find_spec("popgym") is None, reason="popgym (the dev extra) is not installed")


@needs_popgym
@pytest.mark.parametrize("name", [name for name in PORTED_PRESETS if name in CARD_PRESETS or "easy" in name])
def test_equal_to_popgym_on_the_same_randomness(name):
    """Oracle, off-by-one and random actions: same observations, rewards, terminations, returns
    and lengths step for step on popgym's env and memrl's, dealing popgym's shuffled deck(s) or
    using its bandits and pull draws."""
    returns = {}
    for seed, policy_name in enumerate(POLICIES):
        result = play_side_by_side(name, make_policy(policy_name, seed), seed)
        assert result.mismatches == [] and result.oracle_agrees, (policy_name, result.mismatches[:3])
        assert result.memrl_length == result.popgym_length
        assert result.memrl_return == pytest.approx(result.popgym_return, abs=1e-4)
        returns[policy_name] = result.popgym_return
    if name in CARD_PRESETS or "cart-pole" in name or "battleship" in name or "mine-sweeper" in name or "concentration" in name:
        assert returns["oracle"] == pytest.approx(1.0) and returns["random"] < 0.5


@needs_popgym
@pytest.mark.parametrize("name", [name for name in PORTED_PRESETS if name not in CARD_PRESETS])
def test_levels_match_popgym_settings(name):
    """Medium and Hard of the non-card envs are played side by side by scripts/popgym_parity.py only;
    here each level's settings are read off popgym's env (cards: the card tests cover every level)."""
    reference, env = make_popgym_env(name), make(name, num_envs=1)
    if isinstance(env, HigherLower):
        assert env.num_decks == reference.num_decks and env.max_episode_steps == reference.deck_size - 1
    elif isinstance(env, MultiarmedBandit):
        assert (env.num_actions, env.max_episode_steps) == (reference.num_bandits, reference.max_episode_length)
    elif isinstance(env, Battleship):
        assert (env.board_size, env.max_episode_steps) == (reference.board_size, reference.max_episode_length)
        assert list(SHIP_SIZES) == reference.ship_sizes
        assert env.num_actions == int(np.prod(reference.action_space.nvec))
    elif isinstance(env, MineSweeper):
        assert ((env.board_size,) * 2, env.num_mines) == (reference.dims, reference.num_mines)
        assert (env.max_episode_steps, env.obs_dim) == (reference.max_episode_length, reference.observation_space.n)
    elif isinstance(env, Concentration):
        assert (env.num_cards, env.max_episode_steps) == (reference.deck.num_cards, reference.episode_length)
        assert env.num_values == reference.facedown_card
        assert env.obs_dim == int(reference.observation_space.nvec.sum()) and env.num_actions == reference.action_space.n
    elif isinstance(env, Labyrinth):
        assert [env.cells_per_side] * 2 == list(reference.maze_dims)
        assert env.max_episode_steps == reference.max_episode_length - 1  # popgym truncates at curr_step == length - 1
        assert env.obs_dim == int(reference.observation_space.nvec.sum()) and env.num_actions == reference.action_space.n
    else:
        assert env.max_episode_steps == reference.max_episode_length
        assert env.noise_sigma == pytest.approx(float(getattr(reference, "noise_sigma", [0.0])[0]))


@needs_popgym
def test_side_by_side_catches_a_port_one_card_out(monkeypatch):
    """memrl's former RepeatPrevious lag (k back, not k - 1) differs from popgym's rewards at once."""
    monkeypatch.setitem(parity.PRESETS, "repeat-previous-easy", (RepeatPrevious, {"num_decks": 1, "k": 5}))
    result = play_side_by_side("repeat-previous-easy", oracle_from_history, seed=0)
    assert result.mismatches[0].startswith("step 3: memrl reward 0.000000")
    assert result.memrl_return == pytest.approx(1.0, abs=1e-4) and result.popgym_return < 0


PENDULUM_PRESETS = [name for name in PORTED_PRESETS if "pendulum" in name]


@needs_popgym
@pytest.mark.parametrize("name", PENDULUM_PRESETS)
def test_pendulum_equal_to_popgym_at_every_level(name):
    """Seeded random torques in +-2.5 (a fifth clipped) and the oracle from popgym's start state (and,
    Noisy, its noise draws): observations within OBSERVATION_TOLERANCE = 1e-4 (they agree exactly
    here; float64 sin/cos may differ in the last bit elsewhere, far below it), rewards within 1e-6
    (float32 rounding of a reward of at most 1/100 is below 1e-9), the same truncation at length L."""
    for seed, policy_name in enumerate(("random", "oracle")):
        result = play_side_by_side(name, make_policy(policy_name, seed), seed)
        assert result.mismatches == [], result.mismatches[:3]
        assert result.memrl_length == result.popgym_length == make(name, num_envs=1).max_episode_steps
        assert result.memrl_return == pytest.approx(result.popgym_return, abs=1e-6)


@needs_popgym
def test_side_by_side_catches_a_pendulum_clipping_torque_elsewhere(monkeypatch):
    """A port clipping at +-2.5 instead of gymnasium's +-2 differs from popgym once a clipped torque is played."""
    monkeypatch.setattr("envs.popgym_pendulum.MAX_TORQUE", 2.5)
    result = play_side_by_side("popgym-position-only-pendulum-easy", make_policy("random", 0), seed=0)
    assert result.mismatches[0].startswith("step 3: memrl shows")  # the first clipped torque is played at step 2
    assert abs(result.memrl_return - result.popgym_return) > 1e-3


def test_unknown_pendulum_level_names_the_levels():
    from envs.registry import make_env

    with pytest.raises(ValueError, match="unknown env 'popgym-position-only-pendulum-extreme'; choose one of: .*"
                       "popgym-position-only-pendulum-easy, popgym-position-only-pendulum-hard, popgym-position-only-pendulum-medium"):
        make_env("popgym-position-only-pendulum-extreme", num_envs=1)


def pendulum_at(theta: float, speed: float, **kwargs) -> PositionOnlyPendulum:
    """A one-env PositionOnlyPendulum whose episodes start at (theta, speed)."""

    class Placed(PositionOnlyPendulum):
        def _draw_initial_state(self) -> torch.Tensor:
            return torch.tensor([[theta, speed]], dtype=torch.float64)

    return Placed(num_envs=1, seed=0, **kwargs)


def test_pendulum_rules_from_placed_states():
    """Reward scale, observation, gravity and torque, clipping and success, by hand (no popgym needed)."""
    length, half_range = 100, -POPGYM_WORST_REWARD / 2
    upright = pendulum_at(0.0, 0.0, max_episode_length=length)
    obs, _ = upright.reset()
    assert obs.tolist() == [[1.0, 0.0]]
    _, reward, terminated, truncated, _ = upright.step(torch.zeros(1, 1))
    assert reward.item() == pytest.approx(1 / length, rel=1e-6) and not terminated.any() and not truncated.any()
    hanging = pendulum_at(math.pi, 0.0, max_episode_length=length)
    hanging.reset()
    _, reward, *_ = hanging.step(torch.full((1, 1), 9.0))  # clipped to 2 N m
    assert reward.item() == pytest.approx((half_range - math.pi**2 - 0.004) / half_range / length, rel=1e-6)
    speed = 3 * 2 * 0.05 + 15 * math.sin(math.pi) * 0.05
    assert hanging.state[0].tolist() == pytest.approx([math.pi + 0.05 * speed, speed], rel=1e-12)
    tilted = pendulum_at(0.5, 7.9, max_episode_length=length)
    tilted.reset()
    tilted.step(torch.full((1, 1), 2.0))
    assert tilted.state[0, 1].item() == 8.0  # 7.9 + (15 sin 0.5 + 6) 0.05 > 8: clipped
    for theta, speed, success in [(UPRIGHT_ANGLE / 2, 0.0, True), (2 * UPRIGHT_ANGLE, 0.0, False), (0.0, 2 * UPRIGHT_SPEED, False)]:
        env = pendulum_at(theta, speed, max_episode_length=1)
        env.reset()
        env.state = torch.tensor([[theta - 0.05 * speed, speed]], dtype=torch.float64)  # one step lands on (theta, speed)
        env.state[0, 1] -= 15 * math.sin(env.state[0, 0].item()) * 0.05
        *_, info = env.step(torch.zeros(1, 1))
        assert bool(info["success"][0]) == success and bool(info["episode_done"][0])


# -- HigherLower ---------------------------------------------------------------------------------


def test_higher_lower_card_counting_beats_the_best_memoryless_policy():
    """On the same cards (the deal does not depend on the actions), counting earns more."""
    counting = rollout(make("popgym-higher-lower-easy", num_envs=256, seed=6), oracle)["info"]["episode_return"]
    memoryless_returns = rollout(make("popgym-higher-lower-easy", num_envs=256, seed=6), memoryless)["info"]["episode_return"]
    gain = counting - memoryless_returns
    assert gain.mean() > margin(gain)


@pytest.mark.parametrize("name", ["popgym-higher-lower-easy", "popgym-higher-lower-hard"])
def test_higher_lower_memoryless_success_bound_is_below_chance_success(name):
    """Per episode, a memoryless p(guess | rank) plays every step best with probability at most
    prod over ranks of max_p p^a (1-p)^b; its mean (with four standard errors) stays below chance_success."""
    env = make(name, num_envs=512, seed=7)
    obs, _ = env.reset()
    only_higher, only_lower, shown = [], [], []
    for _ in range(env.max_episode_steps):
        above, below = env._cards_left_above_and_below()
        only_higher.append(above > below)
        only_lower.append(below > above)
        shown.append(env.shown_rank.clone())
        obs, *_ = env.step(env.memoryless_action(obs))
    ranks, higher, lower = torch.stack(shown, 1), torch.stack(only_higher, 1).float(), torch.stack(only_lower, 1).float()
    log_bound = torch.zeros(env.num_envs)
    for rank in range(env.num_classes):
        at_rank = (ranks == rank).float()
        a, b = (higher * at_rank).sum(1), (lower * at_rank).sum(1)
        log_bound += torch.xlogy(a, a) + torch.xlogy(b, b) - torch.xlogy(a + b, a + b)
    bound = log_bound.exp()
    assert bound.mean().item() + margin(bound) < env.chance_success


# -- Battleship -----------------------------------------------------------------------------------


def battleship_on(board: list[str]) -> Battleship:
    """A one-env Battleship whose every episode has `board` (rows of '.' water and 'x' ship)."""
    ships = torch.tensor([[cell == "x" for row in board for cell in row]])

    class Fixed(Battleship):
        def _draw_board(self, draws: torch.Tensor) -> torch.Tensor:
            return ships

    return Fixed(num_envs=1, seed=0, board_size=len(board))


FOUR_SHIPS = ["xx......", "........", "xxx.....", "........", "....x..x", "....x..x", "....x..x", ".......x"]
"""Ships of 2, 3, 3 (column 4) and 4 (column 7, rows 4-7) squares, row * 8 + column."""


def test_battleship_rules_on_a_hand_built_board():
    env = battleship_on(FOUR_SHIPS)
    ship_squares = [i for i, cell in enumerate("".join(FOUR_SHIPS)) if cell == "x"]
    assert len(ship_squares) == 12
    obs, info = env.reset()
    assert obs.tolist() == [[1.0, 0.0]] and info["is_first"].all()
    hit, miss = 1 / 12, -1 / 52
    for square, reward, shown in [(0, hit, 1.0), (0, miss, 0.0), (62, miss, 0.0), (1, hit, 1.0)]:  # shooting a hit square again misses
        obs, r, terminated, truncated, _ = env.step(torch.tensor([square]))
        assert float(r[0]) == pytest.approx(reward) and obs[0].tolist() == [1 - shown, shown] and not terminated[0]
    for step, square in enumerate(ship_squares[2:]):
        assert int(env.oracle_action()[0]) == square
        obs, r, terminated, truncated, info = env.step(torch.tensor([square]))
        assert float(r[0]) == pytest.approx(hit) and bool(terminated[0]) == (step == 9) and not truncated[0]
    assert info["success"].all() and info["final_obs"].tolist() == [[0.0, 1.0]] and info["is_first"].all()
    assert float(info["episode_return"][0]) == pytest.approx(1 + 2 * miss) and int(info["episode_length"][0]) == 14
    env.reset()
    for _ in range(64):  # shooting square 2 (water) all along is truncated after 64 shots, unsuccessful
        obs, r, terminated, truncated, info = env.step(torch.tensor([2]))
    assert truncated.all() and not terminated.any() and not info["success"].any()
    assert float(info["episode_return"][0]) == pytest.approx(64 * miss)


@pytest.mark.parametrize("name", ["popgym-battleship-easy", "popgym-battleship-hard"])
def test_battleship_oracle_sweeper_and_uniform_shooter(name):
    """The oracle sinks the fleet without a miss; shooting every square once in turn (which needs a
    step count, i.e. memory) always sinks it; the uniform shooter stays within chance_success."""
    env = make(name, num_envs=256, seed=8)
    info = rollout(env, oracle, num_steps=12)["info"]
    assert info["success"].all() and (info["episode_length"] == 12).all()
    torch.testing.assert_close(info["episode_return"], torch.ones(256), atol=1e-5, rtol=0)
    env = make(name, num_envs=256, seed=9)
    sweep = rollout(env, lambda env, obs: env.elapsed_steps.clone())
    assert sweep["terminated"].any(1).all() and not sweep["truncated"].any()
    env = make(name, num_envs=512, seed=10)
    rate, episodes = memoryless_success_rate(env, 3 * env.max_episode_steps)
    assert rate <= env.chance_success + rate_margin(env.chance_success, episodes)


def test_battleship_boards_are_drawn_like_popgyms():
    """Every board holds the four ships apart; how often each square holds a ship agrees with
    popgym's rejection sampling (within 5 standard errors of the difference at every square)."""
    env = make("popgym-battleship-easy", num_envs=4000, seed=12)
    env.reset()
    boards = env.ships.float()
    assert (boards.sum(1) == 12).all()
    if find_spec("popgym") is None:
        return
    reference = make_popgym_env("popgym-battleship-easy")
    popgym_boards = []
    for seed in range(2000):
        reference.reset(seed=seed)
        popgym_boards.append(torch.from_numpy(reference.board.reshape(-1).astype(np.float32)))
    popgym_frequency, frequency = torch.stack(popgym_boards).mean(0), boards.mean(0)
    pooled = (popgym_frequency * 2000 + frequency * 4000) / 6000
    standard_error = (pooled * (1 - pooled) * (1 / 2000 + 1 / 4000)).sqrt()
    assert ((frequency - popgym_frequency).abs() <= 5 * standard_error).all()
    assert frequency[27] > 1.5 * frequency[0]  # centre squares hold ships more often than corners


# -- MineSweeper ----------------------------------------------------------------------------------


def minesweeper_on(board: list[str]) -> MineSweeper:
    """A one-env MineSweeper whose every episode has `board` (rows of '.' free and '*' mine)."""
    mines = torch.tensor([[cell == "*" for row in board for cell in row]])

    class Fixed(MineSweeper):
        def _draw_mines(self, keys: torch.Tensor) -> torch.Tensor:
            return mines

    return Fixed(num_envs=1, seed=0, board_size=len(board), num_mines=int(mines.sum()))


def test_minesweeper_rules_on_a_hand_built_board():
    env = minesweeper_on(["*...", "....", "....", "...*"])  # counts: square 5 sees 1 mine, square 0 (a mine) sees itself
    free, again, boom = 1 / 14, -0.5 / 12, -0.5 - 1 / 14
    obs, info = env.reset()
    assert obs.tolist() == [[1.0, 0.0, 0.0]] and info["is_first"].all()
    for square, reward, count in [(5, free, 1), (5, again, 1), (6, free, 0), (10, free, 1)]:
        obs, r, terminated, truncated, _ = env.step(torch.tensor([square]))
        assert float(r[0]) == pytest.approx(reward) and obs[0].argmax().item() == count and not terminated[0]
    obs, r, terminated, truncated, info = env.step(torch.tensor([0]))  # a mine: its count includes itself
    assert float(r[0]) == pytest.approx(boom) and terminated.all() and not info["success"].any()
    assert info["final_obs"].tolist() == [[0.0, 1.0, 0.0]]
    assert float(info["episode_return"][0]) == pytest.approx(3 * free + again + boom)
    free_squares = [square for square in range(16) if square not in (0, 15)]
    env.reset()
    for step, square in enumerate(free_squares):
        assert int(env.oracle_action()[0]) == square
        obs, r, terminated, truncated, info = env.step(torch.tensor([square]))
        assert float(r[0]) == pytest.approx(free) and bool(terminated[0]) == (step == 13)
    assert info["success"].all() and float(info["episode_return"][0]) == pytest.approx(1.0)
    env.reset()
    for square in free_squares[:-1] + [1]:  # one repeat: truncated after 14 clicks, not a win
        obs, r, terminated, truncated, info = env.step(torch.tensor([square]))
    assert truncated.all() and not terminated.any() and not info["success"].any()


@pytest.mark.parametrize("name", ["popgym-mine-sweeper-easy", "popgym-mine-sweeper-hard"])
def test_minesweeper_counts_and_mines_and_the_uniform_clicker(name):
    """Every board hides num_mines mines; the counts are the 3 x 3 block sums (recomputed in plain
    Python); the oracle wins; the uniform clicker stays within chance_success."""
    env = make(name, num_envs=256, seed=13)
    env.reset()
    size = env.board_size
    assert (env.mines.sum(1) == env.num_mines).all()
    for mines, counts in zip(env.mines[:4].tolist(), env.counts[:4].tolist()):
        for row in range(size):
            for column in range(size):
                rows, columns = range(max(row - 1, 0), min(row + 2, size)), range(max(column - 1, 0), min(column + 2, size))
                assert counts[row * size + column] == sum(mines[r * size + c] for r in rows for c in columns)
    info = rollout(env, oracle)["info"]
    assert info["success"].all() and torch.allclose(info["episode_return"], torch.ones(256), atol=1e-5)
    rate, episodes = memoryless_success_rate(env, 3 * env.max_episode_steps)
    assert rate <= env.chance_success + rate_margin(env.chance_success, episodes)


def test_minesweeper_mines_are_drawn_like_popgyms():
    """How often each square hides a mine agrees with popgym's draw (within 5 standard errors)."""
    if find_spec("popgym") is None:
        pytest.skip("popgym (the dev extra) is not installed")
    env = make("popgym-mine-sweeper-medium", num_envs=4000, seed=14)
    env.reset()
    reference = make_popgym_env("popgym-mine-sweeper-medium")
    popgym_mines = []
    for seed in range(2000):
        reference.reset(seed=seed)
        popgym_mines.append(torch.from_numpy((reference.hidden_grid == 1).reshape(-1).astype(np.float32)))
    popgym_frequency, frequency = torch.stack(popgym_mines).mean(0), env.mines.float().mean(0)
    pooled = (popgym_frequency * 2000 + frequency * 4000) / 6000
    standard_error = (pooled * (1 - pooled) * (1 / 2000 + 1 / 4000)).sqrt()
    assert ((frequency - popgym_frequency).abs() <= 5 * standard_error).all()


# -- Concentration --------------------------------------------------------------------------------


def concentration_on(layout: list[int], num_values: int) -> Concentration:
    """A one-env Concentration (one deck) whose every episode lays out `layout` (card classes)."""
    cards = torch.tensor([layout])

    class Fixed(Concentration):
        def _draw_layout(self, keys: torch.Tensor) -> torch.Tensor:
            return cards

    return Fixed(num_envs=1, seed=0, num_decks=1, num_values=num_values)


def test_concentration_rules_on_a_hand_built_layout():
    layout = [0, 1] * 26
    env = concentration_on(layout, num_values=2)
    length = env.max_episode_steps
    assert length == 104

    def shown(obs):
        return obs[0].reshape(52, 3).argmax(1).tolist()

    obs, info = env.reset()
    assert shown(obs) == [2] * 52 and info["is_first"].all()
    steps = [  # (card flipped, reward)
        (0, 0.0), (1, -2 / length),  # colours differ: both shown this step, then turned down
        (0, 0.0), (0, -2 / length),  # the same card twice
        (0, 0.0), (2, 2 / 52),  # a pair: stays face up
        (2, -1 / length),  # a face-up card as the first of a pair
        (1, 0.0), (0, -2 / length),  # ... or as the second
    ]
    observations = []
    for card, reward in steps:
        obs, r, terminated, truncated, _ = env.step(torch.tensor([card]))
        assert float(r[0]) == pytest.approx(reward) and not terminated[0]
        observations.append(shown(obs))
    assert observations[0] == [0] + [2] * 51 and observations[1] == [0, 1] + [2] * 50
    assert observations[2] == [0] + [2] * 51 and observations[5] == [0, 2, 0] + [2] * 49
    assert observations[6] == [0, 2, 0] + [2] * 49 and observations[8] == [0, 1, 0] + [2] * 49
    env.reset()
    flipped = []
    for _ in range(52):
        flipped.append(int(env.oracle_action()[0]))
        obs, r, terminated, truncated, info = env.step(torch.tensor([flipped[-1]]))
    assert flipped[:6] == [0, 2, 1, 3, 4, 6] and sorted(flipped) == list(range(52))
    assert terminated.all() and info["success"].all() and float(info["episode_return"][0]) == pytest.approx(1.0)
    assert shown(info["final_obs"]) == layout and int(info["episode_length"][0]) == 52


@pytest.mark.parametrize("name", ["popgym-concentration-easy", "popgym-concentration-hard"])
def test_concentration_oracle_and_uniform_flipper(name):
    """The oracle wins in n flips with return 1; the uniform flipper's win rate agrees with the
    exact chance_success (within four standard errors either way)."""
    env = make(name, num_envs=256, seed=15)
    info = rollout(env, oracle, num_steps=env.num_cards)["info"]
    assert info["success"].all() and torch.allclose(info["episode_return"], torch.ones(256), atol=1e-5)
    rate, episodes = memoryless_success_rate(env, 2 * env.max_episode_steps)
    assert abs(rate - env.chance_success) <= rate_margin(env.chance_success, episodes)


# -- determinism and randomness -------------------------------------------------------------------


@pytest.mark.parametrize("name", LEVELED + ["popgym-battleship-easy", "popgym-mine-sweeper-easy", "popgym-concentration-easy"])
def test_seeded_runs_are_identical(name):
    """Same seed, same episodes (past an auto-reset); another seed, other episodes."""
    num_steps = make(name, num_envs=1).max_episode_steps + 5
    first = rollout(make(name, num_envs=4, seed=11), random_policy(0), num_steps)
    second = rollout(make(name, num_envs=4, seed=11), random_policy(0), num_steps)
    other = rollout(make(name, num_envs=4, seed=12), random_policy(0), 20)
    for key in ("obs", "action", "reward", "terminated", "truncated"):
        assert torch.equal(first[key], second[key]), key
    for key, value in first["info"].items():
        assert torch.equal(value, second["info"][key]), key
    assert not torch.equal(first["obs"][:, :20], other["obs"])
    reseeded = make(name, num_envs=4, seed=99)
    reseeded.seed(11)
    assert torch.equal(rollout(reseeded, random_policy(0), num_steps)["obs"], first["obs"])


@pytest.mark.parametrize(
    "name", EASY + ["popgym-battleship-easy", "popgym-mine-sweeper-easy", "popgym-concentration-easy", "popgym-noisy-position-only-pendulum-easy"]
)
def test_random_draws_do_not_depend_on_which_episodes_restart(name):
    left, right = make(name, num_envs=6, seed=21), make(name, num_envs=6, seed=21)
    left.reset()
    right.reset()
    left._start_episodes(torch.zeros(6, dtype=torch.bool))
    right._start_episodes(torch.tensor([True, False, True, True, False, False]))
    assert torch.equal(left.generator.get_state(), right.generator.get_state())
    action = torch.zeros(6, dtype=torch.int64) if left.action_dim is None else torch.zeros(6, left.action_dim)
    left.step(action)
    right.step(action)
    assert torch.equal(left.generator.get_state(), right.generator.get_state())


@pytest.mark.parametrize("name", EASY + ["popgym-noisy-position-only-pendulum-easy"])
def test_state_dict_resumes_the_same_episodes(name):
    env = make(name, num_envs=4, seed=31)
    env.reset()
    for _ in range(30):
        env.step(env.memoryless_action(env._observe()))
    saved = env.state_dict()
    continued = [env.step(env.oracle_action())[1] for _ in range(40)]
    restored = make(name, num_envs=4, seed=0)
    restored.load_state_dict(saved)
    assert all(torch.equal(restored.step(restored.oracle_action())[1], reward) for reward in continued)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", EASY)
def test_steps_on_cuda_without_host_syncs(name):
    env = make(name, num_envs=64, seed=0, device="cuda")
    obs, _ = env.reset()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2 * env.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(env.oracle_action())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert info["episode_done"].all() and info["success"].all()
    torch.testing.assert_close(info["episode_return"].cpu(), torch.ones(64), atol=1e-4, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "name",
    ["popgym-higher-lower-easy", "popgym-multiarmed-bandit-easy", "popgym-noisy-position-only-cart-pole-easy", "popgym-battleship-easy",
     "popgym-mine-sweeper-hard", "popgym-concentration-hard", "popgym-noisy-position-only-pendulum-hard"],
)
def test_other_popgym_envs_step_on_cuda_without_host_syncs(name):
    env = make(name, num_envs=64, seed=0, device="cuda")
    env.reset()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(env.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(env.oracle_action())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert info["episode_done"].all() and (info["episode_length"] == env.max_episode_steps).all()
    assert info["success"].all()

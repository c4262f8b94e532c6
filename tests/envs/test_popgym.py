"""POPGym-style card tasks (envs/popgym.py): rules, reward scale, chance levels, determinism.

Statistical margins: a measured rate or mean may exceed its stated value by at most four
standard errors (false-alarm rate about 3e-5 per check), the standard error of a rate being
taken at max(rate, 1/n) so that a chance level of 0 still allows a fluke or two.
"""

from __future__ import annotations

import math

import pytest
import torch

from envs.popgym import PRESETS, Autoencode, CountRecall, RepeatFirst, RepeatPrevious

LEVELED = [name for name in PRESETS if name.rsplit("-", 1)[-1] in ("easy", "medium", "hard")]
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


def scored_count(env) -> int:
    if isinstance(env, RepeatPrevious):
        return env.num_cards - env.k
    return env.num_cards


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
    assert len(PRESETS) == 16
    for task, (task_class, levels) in expected.items():
        assert PRESETS[task] == PRESETS[f"{task}-easy"]
        for level, kwargs in zip(("easy", "medium", "hard"), levels):
            assert PRESETS[f"{task}-{level}"] == (task_class, kwargs)


@pytest.mark.parametrize(
    "name, obs_dim, num_actions, length",
    [
        ("repeat-first-hard", 5, 4, 832),
        ("repeat-previous-hard", 4, 4, 156),
        ("count-recall-easy", 4, 27, 52),
        ("count-recall-hard", 26, 17, 208),
        ("autoencode-medium", 5, 4, 208),
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
    """Answering the first card, then any suit but the one shown, earns 1/(26d) - 1/2 on average."""
    env = make(name, num_envs=128, seed=2)

    def shown_then_other_suit(env, obs):
        shown = obs[:, :4].argmax(1)
        return torch.where(obs[:, 4] > 0, shown, (shown + 1) % 4)

    returns = rollout(env, shown_then_other_suit)["info"]["episode_return"]
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
    """A one-env task whose shoe deals `card_classes` in order (and CountRecall asks `queries`,
    the query of step t right after card t). The next scripted card is the one at the index of
    the number of cards dealt so far, as the env also draws where it deals nothing."""

    class Scripted(task_class):
        def _cards_dealt(self) -> int:
            return self.num_cards - int(self.cards_left.sum())

        def _draw_card_class(self):
            dealt = self._cards_dealt()
            return torch.tensor([card_classes[dealt] if dealt < len(card_classes) else -1])

        def _draw_query(self):
            return torch.tensor([queries[max(self._cards_dealt() - 1, 0)]])

    return Scripted(num_envs=1, seed=0, **kwargs)


def play(env, answers: list[int]) -> tuple[list[torch.Tensor], list[float], list[int], bool]:
    """Reset, answer `answers` in turn -> (observations, rewards, oracle actions, success)."""
    obs, _ = env.reset()
    observations, rewards, oracle_actions = [], [], []
    for answer in answers:
        observations.append(obs[0])
        oracle_actions.append(int(env.oracle_action()[0]))
        obs, reward, terminated, _, info = env.step(torch.tensor([answer]))
        rewards.append(float(reward[0]))
    assert bool(terminated[0])
    return observations, rewards, oracle_actions, bool(info["success"][0])


def shuffled_suits(num_decks: int, seed: int) -> list[int]:
    suits = torch.arange(4).repeat_interleave(13 * num_decks)
    return suits[torch.randperm(len(suits), generator=torch.Generator().manual_seed(seed))].tolist()


def test_repeat_first_rules():
    cards = [2] + [0] * 13 + [1] * 13 + [2] * 12 + [3] * 13
    env = scripted(RepeatFirst, cards, num_decks=1)
    observations, rewards, oracle_actions, success = play(env, [2] * 52)
    assert rewards == pytest.approx([1 / 52] * 52) and success and oracle_actions == [2] * 52
    assert [obs[:4].argmax().item() for obs in observations] == cards
    assert [obs[4].item() for obs in observations] == [1.0] + [0.0] * 51
    _, rewards, _, success = play(env, cards)  # repeating the card shown is right only for suit 2
    assert rewards == pytest.approx([1 / 52 if suit == 2 else -1 / 52 for suit in cards]) and not success


@pytest.mark.parametrize("k", [1, 4, 7])
def test_repeat_previous_scores_the_card_k_steps_back(k):
    cards = shuffled_suits(1, seed=k)
    env = scripted(RepeatPrevious, cards, num_decks=1, k=k)
    k_back = [0] * k + cards[:-k]
    observations, rewards, oracle_actions, success = play(env, k_back)
    assert [obs.argmax().item() for obs in observations] == cards
    assert rewards == pytest.approx([0.0] * k + [1 / (52 - k)] * (52 - k)) and success
    assert oracle_actions[k:] == cards[:-k]
    one_step_short = [0] * k + [cards[t - k + 1] for t in range(k, 52)]
    _, rewards, _, success = play(env, one_step_short)
    expected = [0.0] * k + [1 / (52 - k) if a == b else -1 / (52 - k) for a, b in zip(one_step_short[k:], cards[:-k])]
    assert rewards == pytest.approx(expected) and not success
    periodic = scripted(RepeatPrevious, [0, 1, 2, 3] * 13, num_decks=1, k=4)
    _, rewards, _, success = play(periodic, [0, 1, 2, 3] * 13)  # 4 back is the suit shown now
    assert rewards == pytest.approx([0.0] * 4 + [1 / 48] * 48) and success


def test_autoencode_replays_in_reverse():
    cards = [0] * 13 + [1] * 13 + [2] * 13 + [3] * 13
    env = scripted(Autoencode, cards, num_decks=1)
    reverse = cards[::-1]
    observations, rewards, oracle_actions, success = play(env, [1] * 52 + reverse)
    assert [obs[:4].argmax().item() for obs in observations[:52]] == cards
    assert [obs[4].item() for obs in observations[:52]] == [0.0] * 52
    assert all(obs.tolist() == [0, 0, 0, 0, 1] for obs in observations[52:])
    assert rewards == pytest.approx([0.0] * 52 + [1 / 52] * 52) and success
    assert oracle_actions[52:] == reverse
    _, rewards, _, success = play(env, [0] * 52 + cards)  # forward order is wrong everywhere here
    assert rewards == pytest.approx([0.0] * 52 + [-1 / 52] * 52) and not success
    shuffled = shuffled_suits(1, seed=0)
    _, rewards, _, success = play(scripted(Autoencode, shuffled, num_decks=1), [0] * 52 + shuffled[::-1])
    assert rewards == pytest.approx([0.0] * 52 + [1 / 52] * 52) and success


def test_count_recall_counts_the_queried_value():
    values = [0, 1] * 26
    queries = [0, 0, 1] * 17 + [1]
    env = scripted(CountRecall, values, queries, num_decks=1, num_values=2)
    counts = [values[: t + 1].count(queries[t]) for t in range(52)]
    assert counts[:6] == [1, 1, 1, 2, 3, 3] and counts[-1] == 26
    observations, rewards, oracle_actions, success = play(env, counts)
    assert [obs[:2].argmax().item() for obs in observations] == values
    assert [obs[2:].argmax().item() for obs in observations] == queries
    assert rewards == pytest.approx([1 / 52] * 52) and success and oracle_actions == counts
    off_by_one = [count - 1 if count > 0 else 1 for count in counts]  # e.g. not counting this card
    _, rewards, _, success = play(env, off_by_one)
    assert rewards == pytest.approx([-1 / 52] * 52) and not success


@pytest.mark.parametrize("name", LEVELED)
def test_rewards_follow_the_rules_on_random_shoes(name):
    """Answers recomputed in plain Python from the observations alone decide every reward."""
    env = make(name, num_envs=3, seed=4)
    trajectory = rollout(env, random_policy(5))
    scale = 1 / scored_count(env)
    for obs, actions, rewards in zip(trajectory["obs"], trajectory["action"], trajectory["reward"]):
        shown = obs[:, : env.num_classes].argmax(1).tolist()
        if isinstance(env, RepeatFirst):
            answers = [shown[0]] * env.num_cards
        elif isinstance(env, RepeatPrevious):
            answers = [None] * env.k + shown[: -env.k]
        elif isinstance(env, Autoencode):
            shown = shown[: env.num_cards]
            answers = [None] * env.num_cards + shown[::-1]
        else:
            queries = obs[:, env.num_values :].argmax(1).tolist()
            answers = [shown[: t + 1].count(queries[t]) for t in range(env.num_cards)]
        # A shoe holds every class equally often and deals it all.
        assert all(shown.count(card_class) == env.cards_per_class for card_class in range(env.num_classes))
        expected = [
            0.0 if answer is None else (scale if action == answer else -scale) for action, answer in zip(actions.tolist(), answers)
        ]
        assert rewards.tolist() == pytest.approx(expected)
    final_card = trajectory["info"]["final_obs"][:, : env.num_classes]
    assert (final_card == 0).all()


# -- determinism and randomness -------------------------------------------------------------------


@pytest.mark.parametrize("name", LEVELED)
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


@pytest.mark.parametrize("name", EASY)
def test_random_draws_do_not_depend_on_which_episodes_restart(name):
    left, right = make(name, num_envs=6, seed=21), make(name, num_envs=6, seed=21)
    left.reset()
    right.reset()
    left._start_episodes(torch.zeros(6, dtype=torch.bool))
    right._start_episodes(torch.tensor([True, False, True, True, False, False]))
    assert torch.equal(left.generator.get_state(), right.generator.get_state())
    action = torch.zeros(6, dtype=torch.int64)
    left.step(action)
    right.step(action)
    assert torch.equal(left.generator.get_state(), right.generator.get_state())


@pytest.mark.parametrize("name", EASY)
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

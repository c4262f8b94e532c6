"""POPGym-style card tasks (Morad et al., ICLR 2023) as batched torch envs.

    RepeatFirst     answer the suit of the first card, every step
    RepeatPrevious  answer the suit of the card dealt k steps ago
    CountRecall     answer how many cards of the queried value have been dealt so far
    Autoencode      watch a run of suits, then replay it in reverse order

Rules the four tasks share (each class docstring gives the rest):
- Cards come from a shoe of `num_decks` standard 52-card decks, shuffled and dealt one per
  step WITHOUT replacement, as in POPGym: an episode sees every suit exactly 13 * num_decks
  times. Only a card's class (its suit, or CountRecall's value) is kept; dealing a uniformly
  random card of the shoe each step is the same as dealing a shuffled shoe in order, and
  costs one uniform draw per env per step.
- Every scored answer earns +1/n when right and -1/n when wrong, n being the number of scored
  answers in an episode, so a return lies in [-1, 1]: +1 for perfect memory, -1 for always
  wrong. Unscored steps earn 0 whatever the action.
- An episode terminates after its last answer. Its length is fixed and equal to
  `max_episode_steps`, so the time limit never truncates. The observation it ends on
  (`info["final_obs"]`) shows no card (zeros where the card is encoded).
- `success` = every scored answer of the episode was right (the oracle always succeeds).
- Observations are 0/1 float vectors without a clock. `chance_success` and `chance_return`
  are the success rate and mean return of the best memoryless policy (one that maps the
  current observation, plus independent randomness, to an action); how each is derived is in
  the class docstring.
"""

from __future__ import annotations

from math import comb

import torch

from envs.base import BatchedEnv

SUITS = 4
CARDS_PER_DECK = 52


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _CardGame(BatchedEnv):
    """A shoe of `num_decks` decks whose cards fall into `num_classes` equally common classes
    (suits, colours or ranks), dealt one card per step without replacement."""

    obs_low = 0.0
    obs_high = 1.0

    def __init__(self, num_envs: int, device: torch.device | str, seed: int | None, num_decks: int, num_classes: int):
        super().__init__(num_envs, device, seed)
        self.num_decks = num_decks
        self.num_classes = num_classes
        self.cards_per_class = CARDS_PER_DECK * num_decks // num_classes
        self.class_ids = torch.arange(num_classes, device=self.device)
        self.cards_left = torch.zeros(num_envs, num_classes, dtype=torch.int64, device=self.device)
        """Cards of each class still in the shoe, int64 [N, num_classes]."""

    def _refill_shoe(self, mask: torch.Tensor) -> None:
        self.cards_left.masked_fill_(mask[:, None], self.cards_per_class)

    def _deal(self, mask: torch.Tensor) -> torch.Tensor:
        """Deal one card where `mask` [N] is True -> its class, int64 [N] (-1 where none was dealt).

        A card is drawn for every env so that the generator's consumption does not depend on
        the mask; it only leaves the shoe where the mask is True.
        """
        drawn = self._draw_card_class()
        dealt = mask & (drawn >= 0)
        self.cards_left.scatter_add_(1, drawn.clamp(min=0)[:, None], -dealt[:, None].long())
        return torch.where(dealt, drawn, -1)

    def _draw_card_class(self) -> torch.Tensor:
        """The class of a uniformly random card of each env's shoe, int64 [N]; -1 where it is empty."""
        shoe_size = self.cards_left.sum(1)
        # The clamp guards the rare float32 rounding of u * size up to size itself.
        position = torch.minimum(self.randint(0, shoe_size, (self.num_envs,)), shoe_size - 1)
        drawn = (self.cards_left.cumsum(1) <= position[:, None]).sum(1)
        return torch.where(shoe_size > 0, drawn, -1)

    def _one_hot(self, index: torch.Tensor) -> torch.Tensor:
        """float32 [N, num_classes] one-hot of `index` [N]; all zeros where index is -1."""
        return (index[:, None] == self.class_ids).float()


def _scored_reward(correct: torch.Tensor, scored: torch.Tensor, num_scored: int) -> torch.Tensor:
    """+1/num_scored where right, -1/num_scored where wrong, 0 where not scored; float32 [N]."""
    signed = torch.where(correct, 1.0 / num_scored, -1.0 / num_scored)
    return torch.where(scored, signed, 0.0)


class RepeatFirst(_CardGame):
    """Repeat the suit of the first card, at every step.

    Step t = 0 .. 52d-1 (d = num_decks) shows card c_t; the answer is always suit(c_0), the
    first step included. 52d steps, all scored: reward +-1/(52d).
    Observation (5): one-hot suit of c_t (4), then 1.0 on the first step (the card shown is
    the one to remember), else 0.0. Actions (4): a suit.

    Chance. success = 1/4 exactly: every suit occurs among c_1 .. c_{52d-1}, so a policy that
    only sees the current suit must give the same answer whatever it is shown, which is right
    with probability 1/4 (a stochastic policy does no better). `memoryless_action` reaches it
    by answering suit 0 after the first card. Best memoryless return = 1/(26d) - 1/2: after the
    first card, a suit other than the one shown is right with probability 13d/(52d - 1).
    """

    obs_dim = SUITS + 1
    num_actions = SUITS
    chance_success = 0.25

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, num_decks: int = 1):
        _require_positive_int("num_decks", num_decks)
        self.num_cards = CARDS_PER_DECK * num_decks
        self.max_episode_steps = self.num_cards
        self.chance_return = 1 / (26 * num_decks) - 0.5
        super().__init__(num_envs, device, seed, num_decks, SUITS)
        self.first_suit = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.shown_suit = torch.full((num_envs,), -1, dtype=torch.int64, device=self.device)
        self.card_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self._refill_shoe(mask)
        first = self._deal(mask)
        self.shown_suit = torch.where(mask, first, self.shown_suit)
        self.first_suit = torch.where(mask, first, self.first_suit)
        self.card_index.masked_fill_(mask, 0)
        self.all_correct |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        correct = action == self.first_suit
        reward = _scored_reward(correct, torch.ones_like(correct), self.num_cards)
        self.all_correct &= correct
        self.card_index += 1
        terminated = self.card_index == self.num_cards
        self.shown_suit = self._deal(~terminated)
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        is_first = (self.card_index == 0).float()
        return torch.cat([self._one_hot(self.shown_suit), is_first[:, None]], dim=1)

    def oracle_action(self) -> torch.Tensor:
        return self.first_suit.clone()

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        shown_suit = obs[:, :SUITS].argmax(1)
        return torch.where(obs[:, SUITS] > 0, shown_suit, 0)


class RepeatPrevious(_CardGame):
    """Answer the suit of the card dealt k steps ago.

    Step t = 0 .. 52d-1 (d = num_decks) shows card c_t; for t >= k the answer is suit(c_{t-k})
    and is scored +-1/(52d - k). The first k steps have no card k steps back: they are not
    scored (reward 0 whatever the action, and they do not count for success).
    Observation (4): one-hot suit of c_t. Actions (4): a suit.

    Chance. Best memoryless return = -(26d - 1)/(52d - 1): c_{t-k} is one of the other 52d - 1
    cards, so a suit other than the one shown is right with probability 13d/(52d - 1), which
    `memoryless_action` answers. success: chance_success = 0. Even a memoryless policy that
    knew t must get the k-back suits of any m disjoint (k-back, shown) card pairs right, which
    happens with probability at most prod_{i<m} 13d/(52d - m - i) (given the m shown suits, the
    m k-back cards are a random draw from the other 52d - m cards): below 5e-6 for Easy
    (m = 15), 3e-11 for Medium (m = 30), 2e-16 for Hard (m = 45). Without a clock it is far
    smaller: the per-episode bound described under CountRecall stayed below 1e-22 on 1024
    sampled Easy episodes.
    """

    obs_dim = SUITS
    num_actions = SUITS
    chance_success = 0.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        *,
        num_decks: int = 1,
        k: int = 4,
    ):
        _require_positive_int("num_decks", num_decks)
        self.num_cards = CARDS_PER_DECK * num_decks
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.num_cards:
            raise ValueError(
                f"k must be an integer in [1, {self.num_cards - 1}] (fewer than the {self.num_cards} cards dealt), got {k!r}"
            )
        self.k = k
        self.max_episode_steps = self.num_cards
        self.chance_return = -(26 * num_decks - 1) / (52 * num_decks - 1)
        super().__init__(num_envs, device, seed, num_decks, SUITS)
        self.shown_suit = torch.full((num_envs,), -1, dtype=torch.int64, device=self.device)
        self.card_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.recent_suits = torch.zeros(num_envs, k, dtype=torch.int64, device=self.device)
        """Ring buffer: slot t % k holds suit(c_{t-k}) while step t is answered, int64 [N, k]."""
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self._refill_shoe(mask)
        self.shown_suit = torch.where(mask, self._deal(mask), self.shown_suit)
        self.card_index.masked_fill_(mask, 0)
        self.recent_suits.masked_fill_(mask[:, None], 0)
        self.all_correct |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slot = (self.card_index % self.k)[:, None]
        scored = self.card_index >= self.k
        correct = action == self.recent_suits.gather(1, slot).squeeze(1)
        reward = _scored_reward(correct, scored, self.num_cards - self.k)
        self.all_correct &= correct | ~scored
        self.recent_suits.scatter_(1, slot, self.shown_suit[:, None])
        self.card_index += 1
        terminated = self.card_index == self.num_cards
        self.shown_suit = self._deal(~terminated)
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        return self._one_hot(self.shown_suit)

    def oracle_action(self) -> torch.Tensor:
        """suit(c_{t-k}); suit 0 on the unscored first k steps."""
        return self.recent_suits.gather(1, (self.card_index % self.k)[:, None]).squeeze(1)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.argmax(1) + 1) % SUITS


class CountRecall(_CardGame):
    """Answer how many cards of the queried value have been dealt so far.

    A card's value is its colour (num_values = 2), suit (4) or rank (13); each value has
    K = 52d / num_values cards in the shoe (d = num_decks). Step t = 0 .. 52d-1 deals card c_t
    and draws a query value q_t uniformly at random (independently of the cards); the answer is
    #{i <= t : value(c_i) = q_t}, the card just dealt included. It lies in [0, K], so the
    actions are the K + 1 counts themselves, no bucketing. Every step is scored +-1/(52d).
    Observation (2 * num_values): one-hot value of c_t, then one-hot q_t.

    Chance. The best memoryless policy answers one count when the shown card has the queried
    value and another when it has not; each is the count most often right over the episode
    (from the hypergeometric law of the earlier cards), which gives `chance_return` exactly and
    is `memoryless_action`. success: chance_success = 0. The counts a policy without memory must
    match grow through the episode while its observations repeat, so for every episode the best
    any memoryless policy can do is prod over observations o of max_p prod_{steps with o}
    p(answer) = prod over o and answers a of (n_oa / n_o)^n_oa, n_oa counting the steps with
    observation o and answer a (the cards do not depend on the actions, so this is the best
    success probability on that episode). Over 1024 sampled episodes per preset its largest
    value was below 1e-40; tests/envs/test_popgym.py checks it stays below 1e-12.
    """

    chance_success = 0.0

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        *,
        num_decks: int = 1,
        num_values: int = 2,
    ):
        _require_positive_int("num_decks", num_decks)
        if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values not in (2, 4, 13):
            raise ValueError(f"num_values must be 2 (colours), 4 (suits) or 13 (ranks), got {num_values!r}")
        self.num_values = num_values
        self.num_cards = CARDS_PER_DECK * num_decks
        max_count = self.num_cards // num_values
        self.obs_dim = 2 * num_values
        self.num_actions = max_count + 1
        self.max_episode_steps = self.num_cards
        self.guess_if_match, self.guess_if_no_match, accuracy = _best_memoryless_counts(self.num_cards, max_count, num_values)
        self.chance_return = 2 * accuracy - 1
        super().__init__(num_envs, device, seed, num_decks, num_values)
        self.shown_value = torch.full((num_envs,), -1, dtype=torch.int64, device=self.device)
        self.query = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.card_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _draw_query(self) -> torch.Tensor:
        """A uniformly random value for every env, int64 [N]."""
        return self.randint(0, self.num_values, (self.num_envs,))

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self._refill_shoe(mask)
        self.shown_value = torch.where(mask, self._deal(mask), self.shown_value)
        self.query = torch.where(mask, self._draw_query(), self.query)
        self.card_index.masked_fill_(mask, 0)
        self.all_correct |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        correct = action == self.oracle_action()
        reward = _scored_reward(correct, torch.ones_like(correct), self.num_cards)
        self.all_correct &= correct
        self.card_index += 1
        terminated = self.card_index == self.num_cards
        self.shown_value = self._deal(~terminated)
        self.query = self._draw_query()
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        return torch.cat([self._one_hot(self.shown_value), self._one_hot(self.query)], dim=1)

    def oracle_action(self) -> torch.Tensor:
        cards_of_query_left = self.cards_left.gather(1, self.query[:, None]).squeeze(1)
        return self.cards_per_class - cards_of_query_left

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        shown, queried = obs[:, : self.num_values], obs[:, self.num_values :]
        match = (shown * queried).sum(1) > 0
        return torch.where(match, self.guess_if_match, self.guess_if_no_match)


def _best_memoryless_counts(num_cards: int, max_count: int, num_values: int) -> tuple[int, int, float]:
    """CountRecall's best memoryless answers and their accuracy.

    At step t the t earlier cards are a uniform draw from the num_cards - 1 cards other than
    the one shown, of which max_count - 1 (query matches the shown card) or max_count (it does
    not) have the queried value: the count is hypergeometric. Averaged over the steps, the
    most frequent count is the best fixed answer. Returns (answer if match, answer otherwise,
    expected fraction of right answers).
    """
    others = num_cards - 1

    def count_frequency(queried_among_others: int, offset: int) -> list[float]:
        frequency = [0.0] * (max_count + 1)
        for earlier in range(num_cards):
            for seen in range(min(earlier, queried_among_others) + 1):
                ways = comb(queried_among_others, seen) * comb(others - queried_among_others, earlier - seen)
                frequency[seen + offset] += ways / comb(others, earlier) / num_cards
        return frequency

    if_match = count_frequency(max_count - 1, offset=1)
    if_no_match = count_frequency(max_count, offset=0)
    guess_if_match = max(range(max_count + 1), key=if_match.__getitem__)
    guess_if_no_match = max(range(max_count + 1), key=if_no_match.__getitem__)
    accuracy = (if_match[guess_if_match] + (num_values - 1) * if_no_match[guess_if_no_match]) / num_values
    return guess_if_match, guess_if_no_match, accuracy


class Autoencode(_CardGame):
    """Watch every card of the shoe, then replay their suits in reverse order.

    Watch phase, steps t = 0 .. L-1 (L = 52d, d = num_decks): step t shows card c_t; actions
    are not scored. Play phase, steps t = L .. 2L-1: no card is shown and the answer is
    suit(c_{2L-1-t}), i.e. the last card watched first; each answer is scored +-1/L.
    Observation (5): one-hot suit of the card shown (zeros in the play phase), then 1.0 in the
    play phase, else 0.0. Actions (4): a suit.

    Chance. Best memoryless return = -1/2: play-phase observations are all alike and each
    position of the run is equally likely to hold any suit, so any memoryless answer is right
    a quarter of the time (a fixed suit, `memoryless_action`, is right for exactly 13d of the L
    answers: return exactly -1/2). success: chance_success = 0. Even knowing t, a memoryless
    policy can only bet on one suit sequence, and the likeliest has probability
    1 / multinomial(52d; 13d, 13d, 13d, 13d) (under 2e-29 for Easy); without a clock the best
    is (1/4)^(52d).
    """

    obs_dim = SUITS + 1
    num_actions = SUITS
    chance_success = 0.0
    chance_return = -0.5

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, num_decks: int = 1):
        _require_positive_int("num_decks", num_decks)
        self.num_cards = CARDS_PER_DECK * num_decks
        self.max_episode_steps = 2 * self.num_cards
        super().__init__(num_envs, device, seed, num_decks, SUITS)
        self.watched_suits = torch.zeros(num_envs, self.num_cards, dtype=torch.int64, device=self.device)
        """suit(c_i) at column i, filled as the cards are dealt, int64 [N, L]."""
        self.shown_suit = torch.full((num_envs,), -1, dtype=torch.int64, device=self.device)
        self.step_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _show_card(self, mask: torch.Tensor) -> None:
        """Deal c_t (t = step_index) where `mask`, show it and write it to column t."""
        dealt = self._deal(mask)
        column = self.step_index.clamp(max=self.num_cards - 1)[:, None]
        kept = self.watched_suits.gather(1, column).squeeze(1)
        self.watched_suits.scatter_(1, column, torch.where(dealt >= 0, dealt, kept)[:, None])
        self.shown_suit = torch.where(mask, dealt, self.shown_suit)

    def _start_episodes(self, mask: torch.Tensor) -> None:
        self._refill_shoe(mask)
        self.step_index.masked_fill_(mask, 0)
        self.all_correct |= mask
        self._show_card(mask)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        in_play = self.step_index >= self.num_cards
        correct = action == self.oracle_action()
        reward = _scored_reward(correct, in_play, self.num_cards)
        self.all_correct &= correct | ~in_play
        self.step_index += 1
        terminated = self.step_index == 2 * self.num_cards
        self.shown_suit.fill_(-1)
        self._show_card(self.step_index < self.num_cards)
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        in_play = (self.step_index >= self.num_cards).float()
        return torch.cat([self._one_hot(self.shown_suit), in_play[:, None]], dim=1)

    def oracle_action(self) -> torch.Tensor:
        """suit(c_{2L-1-t}) in the play phase; suit 0 while watching (not scored)."""
        column = (2 * self.num_cards - 1 - self.step_index).clamp(0, self.num_cards - 1)
        recalled = self.watched_suits.gather(1, column[:, None]).squeeze(1)
        return torch.where(self.step_index >= self.num_cards, recalled, 0)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.shape[0], dtype=torch.int64, device=obs.device)


PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    "repeat-first": (RepeatFirst, {"num_decks": 1}),
    "repeat-first-easy": (RepeatFirst, {"num_decks": 1}),
    "repeat-first-medium": (RepeatFirst, {"num_decks": 8}),
    "repeat-first-hard": (RepeatFirst, {"num_decks": 16}),
    "repeat-previous": (RepeatPrevious, {"num_decks": 1, "k": 4}),
    "repeat-previous-easy": (RepeatPrevious, {"num_decks": 1, "k": 4}),
    "repeat-previous-medium": (RepeatPrevious, {"num_decks": 2, "k": 32}),
    "repeat-previous-hard": (RepeatPrevious, {"num_decks": 3, "k": 64}),
    "count-recall": (CountRecall, {"num_decks": 1, "num_values": 2}),
    "count-recall-easy": (CountRecall, {"num_decks": 1, "num_values": 2}),
    "count-recall-medium": (CountRecall, {"num_decks": 2, "num_values": 4}),
    "count-recall-hard": (CountRecall, {"num_decks": 4, "num_values": 13}),
    "autoencode": (Autoencode, {"num_decks": 1}),
    "autoencode-easy": (Autoencode, {"num_decks": 1}),
    "autoencode-medium": (Autoencode, {"num_decks": 2}),
    "autoencode-hard": (Autoencode, {"num_decks": 3}),
}

"""POPGym's card games (Morad et al., ICLR 2023) as batched torch envs, equal to popgym 1.0.7.

    RepeatFirst     answer the suit of the first card, every step
    RepeatPrevious  answer the suit of the k-th most recent card (k = 1 is the card shown)
    CountRecall     answer how many cards of the queried value have been dealt so far
    Autoencode      watch the deck's suits, then replay them in reverse order
    HigherLower     guess whether the next card ranks higher or lower than the one shown

Each class follows the rules of popgym 1.0.7's class of the same name (popgym/envs/*.py, read
and run side by side in tests/envs/test_popgym.py and scripts/popgym_parity.py): the same
episode length, reward scale, observation content and dealing. `PRESETS` also holds the other
POPGym envs memrl has (envs/popgym_*.py) under their popgym-<env>-<level> names. Rules the
card games share:
- Cards come from a shoe of `num_decks` standard 52-card decks (52d cards), shuffled and dealt
  one at a time WITHOUT replacement; reset deals the first card. Only a card's class (its suit,
  CountRecall's colour/suit/rank, HigherLower's rank) matters, and dealing a uniformly random card of the shoe
  each step is the same as dealing a shuffled shoe in order: one uniform draw per env per step.
- Every scored answer earns +1/n when right and -1/n when wrong, n being the number of scored
  answers in an episode, so a return lies in [-1, 1]: +1 for perfect memory, -1 for always
  wrong. Unscored steps earn 0 whatever the action. popgym's n is 52d - 1 (RepeatFirst,
  CountRecall), 52d - k (RepeatPrevious) and 52d (Autoencode); HigherLower's differs (see there).
- Episodes terminate by themselves after a fixed number of steps (popgym has no time limit;
  `max_episode_steps` equals that length, so it never truncates). The observation an episode
  ends on (`info["final_obs"]`) is the one popgym's last `step` returns.
- Observations encode popgym's Discrete / Tuple / MultiDiscrete observation as the
  concatenated one-hots of its components, in popgym's order (the flat Box any gymnasium
  adapter makes of them). Actions are popgym's Discrete actions, unchanged.
- `success` = every scored answer of the episode was right (the oracle always succeeds).
  `chance_success` and `chance_return` are the success rate and mean return of the best
  memoryless policy (one that maps the current observation, plus independent randomness, to
  an action); each class docstring derives them.
"""

from __future__ import annotations

from math import comb

import torch

from envs import (
    popgym_bandit, popgym_battleship, popgym_cartpole, popgym_concentration, popgym_labyrinth, popgym_minesweeper,
    popgym_pendulum,
)
from envs.base import BatchedEnv

SUITS = 4
CARDS_PER_DECK = 52


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _CardGame(BatchedEnv):
    """Shoes of `num_decks` decks whose cards fall into `num_classes` equally common classes
    (suits, colours or ranks), dealt one card per step without replacement. A shoe is the
    count of cards of each class still in it, int64 [N, num_classes]."""

    obs_low = 0.0
    obs_high = 1.0

    def __init__(self, num_envs: int, device: torch.device | str, seed: int | None, num_decks: int, num_classes: int):
        super().__init__(num_envs, device, seed)
        self.num_decks = num_decks
        self.num_classes = num_classes
        self.num_cards = CARDS_PER_DECK * num_decks
        self.cards_per_class = self.num_cards // num_classes
        self.class_ids = torch.arange(num_classes, device=self.device)
        self.cards_left = self._empty_shoe()
        """The shoe the cards are dealt from, int64 [N, num_classes]."""

    def _empty_shoe(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, self.num_classes, dtype=torch.int64, device=self.device)

    def _refill(self, shoe: torch.Tensor, mask: torch.Tensor) -> None:
        shoe.masked_fill_(mask[:, None], self.cards_per_class)

    shoes_dealt_at_reset = 1
    """How many cards `_restart` deals to each env (one per shoe)."""

    def _start_episodes(self, mask: torch.Tensor) -> None:
        if self.device.type == "cpu" and not bool(mask.any()):
            # Nothing restarts (checked on the CPU only, where it costs no host sync): only the draws
            # that `_restart`'s deals make, so that the generator's consumption does not depend on the mask.
            for _ in range(self.shoes_dealt_at_reset):
                self.random(self.num_envs)
            return
        self._restart(mask)

    def _restart(self, mask: torch.Tensor) -> None:
        """`_start_episodes` for a task: refill the shoes and deal the first cards where `mask` [N] is True."""
        raise NotImplementedError

    def _deal(self, shoe: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Deal one card of `shoe` where `mask` [N] is True (None: every env) -> its class, int64 [N] (-1
        where none was dealt).

        A card is drawn for every env so that the generator's consumption does not depend on
        the mask; it only leaves the shoe where the mask is True.
        """
        drawn = self._draw_card_class(shoe)
        if mask is not None:
            drawn = torch.where(mask, drawn, -1)
        shoe.sub_((drawn[:, None] == self.class_ids).long())  # -1 (nothing dealt) matches no class
        return drawn

    def _draw_card_class(self, shoe: torch.Tensor) -> torch.Tensor:
        """The class of a uniformly random card of each env's `shoe`, int64 [N]; -1 where it is empty."""
        shoe_size = shoe.sum(1)
        # The minimum guards the rare float32 rounding of u * size up to size itself; an empty shoe gives -1.
        position = torch.minimum((self.random(self.num_envs) * shoe_size).long(), shoe_size - 1)
        drawn = torch.searchsorted(shoe.cumsum(1), position[:, None], right=True).squeeze(1)
        return torch.where(shoe_size > 0, drawn, -1)

    def _one_hot(self, index: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """float32 [N, size] one-hot of `index` [N] (size <= num_classes, default num_classes)."""
        size = self.num_classes if size is None else size
        return (index[:, None] == self.class_ids[:size]).float()


def _scored_reward(correct: torch.Tensor, scored: torch.Tensor, num_scored: int) -> torch.Tensor:
    """+1/num_scored where right, -1/num_scored where wrong, 0 where not scored; float32 [N]."""
    signed = torch.where(correct, 1.0 / num_scored, -1.0 / num_scored)
    return torch.where(scored, signed, 0.0)


class RepeatFirst(_CardGame):
    """Repeat the suit of the first card, at every step (popgym's RepeatFirst).

    Reset deals c_0; step t = 0 .. L-1 (L = 52d - 1, d = num_decks) is shown c_t, answers
    suit(c_0) (the first step included) and deals c_{t+1}. L steps, all scored: reward +-1/L.
    The episode ends on the last card, c_{52d-1}.
    Observation (4): one-hot suit of the card shown. Actions (4): a suit.

    Chance. success = 1/4 exactly: the L cards shown hold every suit, so a policy that only
    sees the current suit must give the same answer whatever it is shown, which is right with
    probability 1/4 (a stochastic policy does no better). `memoryless_action` reaches it by
    always answering suit 0. Best memoryless return: answering the suit shown is right at
    step 0 and, at a later step, with probability (13d - 1)/(52d - 1) (another suit: 13d/(52d - 1));
    averaged over the L steps the suit shown wins by 1/L^2, and is right with probability
    p = ((L - 1) 13d + 1) / L^2, so chance_return = 2p - 1.
    """

    obs_dim = SUITS
    num_actions = SUITS
    chance_success = 0.25

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, num_decks: int = 1):
        _require_positive_int("num_decks", num_decks)
        length = CARDS_PER_DECK * num_decks - 1
        self.max_episode_steps = length
        self.chance_return = 2 * ((length - 1) * 13 * num_decks + 1) / length**2 - 1
        super().__init__(num_envs, device, seed, num_decks, SUITS)
        self.first_suit = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.shown_suit = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.step_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _restart(self, mask: torch.Tensor) -> None:
        self._refill(self.cards_left, mask)
        first = self._deal(self.cards_left, mask)
        self.shown_suit = torch.where(mask, first, self.shown_suit)
        self.first_suit = torch.where(mask, first, self.first_suit)
        self.step_index.masked_fill_(mask, 0)
        self.all_correct |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        correct = action == self.first_suit
        reward = _scored_reward(correct, torch.ones_like(correct), self.max_episode_steps)
        self.all_correct &= correct
        self.step_index += 1
        terminated = self.step_index == self.max_episode_steps
        self.shown_suit = self._deal(self.cards_left)
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        return self._one_hot(self.shown_suit)

    def oracle_action(self) -> torch.Tensor:
        return self.first_suit.clone()

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.shape[0], dtype=torch.int64, device=obs.device)


class RepeatPrevious(_CardGame):
    """Answer the suit of the k-th most recent card, the card shown counting as the first
    (popgym's RepeatPrevious: k = 1 asks for the card shown, k = 4 for the one 3 steps back).

    Reset deals c_0; step t = 0 .. 52d-2 (d = num_decks) is shown c_t and deals c_{t+1}; for
    t >= k - 1 the answer is suit(c_{t-k+1}), scored +-1/(52d - k). The first k - 1 steps are
    not scored (reward 0 whatever the action, and they do not count for success). The episode
    is 52d - 1 steps long and ends on the last card.
    Observation (4): one-hot suit of c_t. Actions (4): a suit.

    Chance (k >= 2). Best memoryless return = -(26d - 1)/(52d - 1): c_{t-k+1} is one of the
    other 52d - 1 cards, so a suit other than the one shown is right with probability
    13d/(52d - 1), which `memoryless_action` answers. success: chance_success = 0. Even a
    memoryless policy that knew t must get the answers of any m disjoint (answer, shown) card
    pairs right, which happens with probability at most prod_{i<m} 13d/(52d - m - i): below
    1e-5 for Easy, far below for Medium and Hard; without a clock it is smaller still (the
    per-episode bound of the tests stays below 1e-12). k = 1 needs no memory.
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
        num_cards = CARDS_PER_DECK * num_decks
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_cards:
            raise ValueError(f"k must be an integer in [1, {num_cards - 1}] (fewer than the {num_cards} cards dealt), got {k!r}")
        self.k = k
        self.max_episode_steps = num_cards - 1
        self.chance_return = -(26 * num_decks - 1) / (52 * num_decks - 1)
        super().__init__(num_envs, device, seed, num_decks, SUITS)
        self.step_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.recent_suits = torch.zeros(num_envs, k, dtype=torch.int64, device=self.device)
        """Ring buffer of the last k suits shown: slot t % k holds suit(c_t), int64 [N, k]."""
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _show(self, suit: torch.Tensor, mask: torch.Tensor) -> None:
        """Write `suit` to slot step_index % k where `mask`."""
        slot = (self.step_index % self.k)[:, None]
        kept = self.recent_suits.gather(1, slot).squeeze(1)
        self.recent_suits.scatter_(1, slot, torch.where(mask, suit, kept)[:, None])

    def _restart(self, mask: torch.Tensor) -> None:
        self._refill(self.cards_left, mask)
        self.step_index.masked_fill_(mask, 0)
        self.recent_suits.masked_fill_(mask[:, None], 0)
        self._show(self._deal(self.cards_left, mask), mask)
        self.all_correct |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scored = self.step_index >= self.k - 1
        correct = action == self.oracle_action()
        reward = _scored_reward(correct, scored, self.num_cards - self.k)
        self.all_correct &= correct | ~scored
        self.step_index += 1
        terminated = self.step_index == self.max_episode_steps
        everyone = torch.ones_like(terminated)
        self._show(self._deal(self.cards_left, everyone), everyone)
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        return self._one_hot(self.recent_suits.gather(1, (self.step_index % self.k)[:, None]).squeeze(1))

    def oracle_action(self) -> torch.Tensor:
        """suit(c_{t-k+1}) (slot (t + 1) % k); suit 0 on the unscored first k - 1 steps."""
        recalled = self.recent_suits.gather(1, ((self.step_index + 1) % self.k)[:, None]).squeeze(1)
        return torch.where(self.step_index >= self.k - 1, recalled, 0)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.argmax(1) + 1) % SUITS


class CountRecall(_CardGame):
    """Answer how many cards of the queried value have been dealt so far (popgym's CountRecall).

    A card's value is its colour (num_values = 2), suit (4) or rank (13); each value has
    K = 52d / num_values cards in a shoe (d = num_decks). Two shoes are shuffled: the value
    shoe and the query shoe. Reset deals value v_0 and query q_0 (the query's value); step
    t = 0 .. 52d-2 answers #{i <= t : v_i = q_t} (the card shown included) and deals v_{t+1},
    q_{t+1}. The answer lies in [0, K], so the actions are the K + 1 counts themselves. All
    52d - 1 steps are scored +-1/(52d - 1); the episode ends on the last card of both shoes.
    Observation (2 * num_values): one-hot value of v_t, then one-hot value of q_t.

    Chance. The best memoryless policy answers one count when the shown card has the queried
    value and another when it has not; each is the count most often right over the episode
    (the query shoe is independent of the value shoe, and the earlier values follow the
    hypergeometric law), which gives `chance_return` exactly and is `memoryless_action`.
    success: chance_success = 0. The counts a policy without memory must match grow through
    the episode while its observations repeat, so for every episode the best any memoryless
    policy can do is prod over observations o of max_p prod_{steps with o} p(answer) = prod over
    o and answers a of (n_oa / n_o)^n_oa, n_oa counting the steps with observation o and answer
    a (the cards do not depend on the actions, so this is the best success probability on that
    episode); tests/envs/test_popgym.py checks it stays below 1e-12.
    """

    chance_success = 0.0
    shoes_dealt_at_reset = 2

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
        num_cards = CARDS_PER_DECK * num_decks
        max_count = num_cards // num_values
        self.obs_dim = 2 * num_values
        self.num_actions = max_count + 1
        self.max_episode_steps = num_cards - 1
        self.guess_if_match, self.guess_if_no_match, accuracy = _best_memoryless_counts(
            num_cards, max_count, num_values, self.max_episode_steps
        )
        self.chance_return = 2 * accuracy - 1
        super().__init__(num_envs, device, seed, num_decks, num_values)
        self.queries_left = self._empty_shoe()
        """The query shoe, int64 [N, num_values]."""
        self.shown_value = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.query = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.step_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _restart(self, mask: torch.Tensor) -> None:
        self._refill(self.cards_left, mask)
        self._refill(self.queries_left, mask)
        self.shown_value = torch.where(mask, self._deal(self.cards_left, mask), self.shown_value)
        self.query = torch.where(mask, self._deal(self.queries_left, mask), self.query)
        self.step_index.masked_fill_(mask, 0)
        self.all_correct |= mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        correct = action == self.oracle_action()
        reward = _scored_reward(correct, torch.ones_like(correct), self.max_episode_steps)
        self.all_correct &= correct
        self.step_index += 1
        terminated = self.step_index == self.max_episode_steps
        self.shown_value = self._deal(self.cards_left)
        self.query = self._deal(self.queries_left)
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


def _best_memoryless_counts(num_cards: int, max_count: int, num_values: int, num_steps: int) -> tuple[int, int, float]:
    """CountRecall's best memoryless answers and their accuracy over steps t = 0 .. num_steps-1.

    At step t the t earlier cards are a uniform draw from the num_cards - 1 cards other than
    the one shown, of which max_count - 1 (query matches the shown card) or max_count (it does
    not) have the queried value: the count is hypergeometric. Averaged over the steps, the
    most frequent count is the best fixed answer. Returns (answer if match, answer otherwise,
    expected fraction of right answers).
    """
    others = num_cards - 1

    def count_frequency(queried_among_others: int, offset: int) -> list[float]:
        frequency = [0.0] * (max_count + 1)
        for earlier in range(num_steps):
            for seen in range(min(earlier, queried_among_others) + 1):
                ways = comb(queried_among_others, seen) * comb(others - queried_among_others, earlier - seen)
                frequency[seen + offset] += ways / comb(others, earlier) / num_steps
        return frequency

    if_match = count_frequency(max_count - 1, offset=1)
    if_no_match = count_frequency(max_count, offset=0)
    guess_if_match = max(range(max_count + 1), key=if_match.__getitem__)
    guess_if_no_match = max(range(max_count + 1), key=if_no_match.__getitem__)
    accuracy = (if_match[guess_if_match] + (num_values - 1) * if_no_match[guess_if_no_match]) / num_values
    return guess_if_match, guess_if_no_match, accuracy


PLAY, WATCH = 0, 1
"""Autoencode's modes, numbered as popgym numbers them."""


class Autoencode(_CardGame):
    """Watch the deck's suits, then replay them in reverse order (popgym's Autoencode).

    Watch phase: reset deals c_0; steps t = 0 .. L-2 (L = 52d, d = num_decks) are shown c_t,
    deal c_{t+1} and are not scored. Play phase: step L-1 is shown the last card c_{L-1} with
    the play flag, and steps t = L-1 .. 2L-2 answer suit(c_{2L-2-t}) (the last card dealt first,
    c_0 last), each scored +-1/L. After the first play step popgym shows suit 0 with the play
    flag (the observation of its card index 0), and so does memrl. 2L - 1 steps.
    Observation (6): one-hot mode (PLAY, WATCH), then one-hot suit shown. Actions (4): a suit.

    Chance. Best memoryless return = -1/2 + 3/(104d): the first play answer is shown and right;
    the other L - 1 play observations are all alike (unless c_{L-1} is suit 0, when all L are)
    and each suit is as likely there, so a fixed suit is the best answer; `memoryless_action`
    (the suit shown) is right 13d + 3/4 times on average. success: chance_success = 0. Even
    knowing t, a memoryless policy can only bet on one sequence of L - 1 suits, the likeliest
    of which has probability 1 / multinomial(L - 1; ...) (under 1e-27 for Easy).
    """

    obs_dim = 2 + SUITS
    num_actions = SUITS
    chance_success = 0.0

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, num_decks: int = 1):
        _require_positive_int("num_decks", num_decks)
        self.max_episode_steps = 2 * CARDS_PER_DECK * num_decks - 1
        self.chance_return = -0.5 + 3 / (104 * num_decks)
        super().__init__(num_envs, device, seed, num_decks, SUITS)
        self.watched_suits = torch.zeros(num_envs, self.num_cards + 1, dtype=torch.int64, device=self.device)
        """suit(c_i) at column i, filled as the cards are dealt; column L takes the -1 of the steps that deal
        none, int64 [N, L + 1]."""
        self.shown_suit = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        """The suit the observation shows: c_t's while watching and on the first play step, then 0, int64 [N]."""
        self.step_index = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_correct = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self.observation_table = torch.zeros(2 * SUITS, self.obs_dim, device=self.device)
        """Every observation there is, row in_play * SUITS + suit shown, float32 [2 * SUITS, obs_dim]."""
        for in_play in (0, 1):
            self.observation_table[in_play * SUITS : (in_play + 1) * SUITS, PLAY if in_play else WATCH] = 1.0
            self.observation_table[in_play * SUITS : (in_play + 1) * SUITS, 2:] = torch.eye(SUITS)

    def _restart(self, mask: torch.Tensor) -> None:
        self._refill(self.cards_left, mask)
        self.step_index.masked_fill_(mask, 0)
        self.all_correct |= mask
        first = self._deal(self.cards_left, mask)
        self.watched_suits[:, 0] = torch.where(mask, first, self.watched_suits[:, 0])
        self.shown_suit = torch.where(mask, first, self.shown_suit)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        in_play = self.step_index >= self.num_cards - 1
        correct = action == self._recalled_suit()
        reward = _scored_reward(correct, in_play, self.num_cards)
        self.all_correct &= correct | ~in_play
        self.step_index += 1
        terminated = self.step_index == self.max_episode_steps
        # c_t while watching (t < L); the shoe is empty from t = L on, and the deal gives -1.
        dealt = self._deal(self.cards_left)
        self.watched_suits.scatter_(1, self.step_index.clamp(max=self.num_cards)[:, None], dealt[:, None])
        self.shown_suit = dealt.clamp(min=0)
        return reward, terminated, terminated & self.all_correct

    def _observe(self) -> torch.Tensor:
        row = (self.step_index >= self.num_cards - 1) * SUITS + self.shown_suit
        return self.observation_table.index_select(0, row)

    def _recalled_suit(self) -> torch.Tensor:
        """suit(c_{2L-2-t}), the answer of play step t, int64 [N] (before the play phase: column L - 1, not scored)."""
        column = (2 * self.num_cards - 2 - self.step_index).clamp_(0, self.num_cards - 1)
        return self.watched_suits.gather(1, column[:, None]).squeeze(1)

    def oracle_action(self) -> torch.Tensor:
        """suit(c_{2L-2-t}) in the play phase; suit 0 while watching (not scored)."""
        return torch.where(self.step_index >= self.num_cards - 1, self._recalled_suit(), 0)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, 2:].argmax(1)


RANKS = 13
HIGHER, LOWER = 0, 1
"""HigherLower's actions, numbered as popgym numbers them."""


class HigherLower(_CardGame):
    """Guess whether the next card ranks higher or lower than the one shown (popgym's HigherLower).

    Reset deals c_0; step t = 0 .. 52d-2 (d = num_decks) is shown rank(c_t), takes a guess and
    deals c_{t+1}: +1/(52d) if the guess was right, -1/(52d) if wrong, 0 when the ranks are
    equal (a push). popgym scales by the deck size although 52d - 1 guesses are made. The
    episode ends on the last card. Ranks run ace (0) to king (12).
    Observation (13): one-hot rank shown. Actions (2): 0 = higher, 1 = lower.

    Memory helps by counting cards: `oracle_action` guesses the side with more cards left in
    the shoe (higher on a tie), the best guess given every card dealt. success = every guess
    was a best guess (one at least as likely to be right as the other). The best memoryless
    policy guesses higher below rank 6 and lower above it (`memoryless_action`). success is a
    weak memory signal here: a memoryless policy p(guess | rank) plays every step best with
    probability at most prod over ranks of max_p p^a (1-p)^b on an episode (a, b: steps where
    only higher, only lower is best), whose mean over 1000 episodes is 0.27 / 0.084 / 0.046 for
    d = 1 / 2 / 3; chance_success = 0.4 / d lies above it (tests/envs/test_popgym.py checks).
    """

    obs_dim = RANKS
    num_actions = 2

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, num_decks: int = 1):
        _require_positive_int("num_decks", num_decks)
        self.max_episode_steps = CARDS_PER_DECK * num_decks - 1
        self.chance_success = 0.4 / num_decks
        super().__init__(num_envs, device, seed, num_decks, RANKS)
        self.shown_rank = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.all_best = torch.ones(num_envs, dtype=torch.bool, device=self.device)

    def _restart(self, mask: torch.Tensor) -> None:
        self._refill(self.cards_left, mask)
        self.shown_rank = torch.where(mask, self._deal(self.cards_left, mask), self.shown_rank)
        self.all_best |= mask

    def _cards_left_above_and_below(self) -> tuple[torch.Tensor, torch.Tensor]:
        rank = self.shown_rank[:, None]
        above = (self.cards_left * (self.class_ids > rank)).sum(1)
        below = (self.cards_left * (self.class_ids < rank)).sum(1)
        return above, below

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        above, below = self._cards_left_above_and_below()
        guessed_higher = action == HIGHER
        self.all_best &= torch.where(guessed_higher, above >= below, below >= above)
        next_rank = self._deal(self.cards_left)
        right = (next_rank > self.shown_rank) == guessed_higher
        reward = _scored_reward(right, next_rank != self.shown_rank, self.num_cards)
        self.shown_rank = next_rank
        terminated = self.cards_left.sum(1) == 0
        return reward, terminated, terminated & self.all_best

    def _observe(self) -> torch.Tensor:
        return self._one_hot(self.shown_rank)

    def oracle_action(self) -> torch.Tensor:
        above, below = self._cards_left_above_and_below()
        return torch.where(above >= below, HIGHER, LOWER)

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.where(obs.argmax(1) <= RANKS // 2, HIGHER, LOWER)


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
    "popgym-higher-lower-easy": (HigherLower, {"num_decks": 1}),
    "popgym-higher-lower-medium": (HigherLower, {"num_decks": 2}),
    "popgym-higher-lower-hard": (HigherLower, {"num_decks": 3}),
}
CARD_TASKS = ("repeat-first", "repeat-previous", "count-recall", "autoencode")
PRESETS.update({f"popgym-{task}-{level}": PRESETS[f"{task}-{level}"] for task in CARD_TASKS for level in ("easy", "medium", "hard")})
PRESETS.update(popgym_bandit.PRESETS)
PRESETS.update(popgym_cartpole.PRESETS)
PRESETS.update(popgym_pendulum.PRESETS)
PRESETS.update(popgym_battleship.PRESETS)
PRESETS.update(popgym_minesweeper.PRESETS)
PRESETS.update(popgym_concentration.PRESETS)
PRESETS.update(popgym_labyrinth.PRESETS)
"""Every POPGym env memrl has, also under its `popgym-<env>-<level>` name (gymnasium id
memrl/Popgym<Env><Level>-v0); the card tasks keep their short names too."""

"""POPGym's Concentration (Morad et al., ICLR 2023) as a batched torch env, equal to popgym 1.0.7."""

from __future__ import annotations

import math
from functools import cache

import torch

from envs.base import BatchedEnv

CARDS_PER_DECK = 52


@cache
def _uniform_flipper_success(per_class: int, num_values: int, flips: int) -> float:
    """P(`memoryless_action` turns every card up within `flips` flips), `per_class` cards of each of
    `num_values` classes. It flips a uniformly random card shown face down: for the first card of a
    pair that excludes the two cards of the pair just turned back down (still shown this step).
    Classes are interchangeable, so a state keeps per class (face-down count, shown-last-step flag)
    sorted, plus the held card's class for the second flip."""

    @cache
    def first_flip(classes: tuple[tuple[int, int], ...], flips_left: int) -> float:
        total = sum(count for count, _ in classes)
        if total == 0:
            return 1.0
        if flips_left == 0:
            return 0.0
        choosable = total - sum(excluded for _, excluded in classes)
        counts = tuple(count for count, _ in classes)
        return sum(
            (count - excluded) / choosable * second_flip(counts, k, flips_left - 1)
            for k, (count, excluded) in enumerate(classes)
            if count > excluded
        )

    @cache
    def second_flip(counts: tuple[int, ...], held: int, flips_left: int) -> float:
        if flips_left == 0:
            return 0.0
        others = sum(counts) - 1
        matched = list(counts)
        matched[held] -= 2
        success = (counts[held] - 1) / others * first_flip(tuple(sorted((count, 0) for count in matched)), flips_left - 1)
        for j, count in enumerate(counts):
            if j != held and count:
                shown = tuple(sorted((c, int(i in (held, j))) for i, c in enumerate(counts)))
                success += count / others * first_flip(shown, flips_left - 1)
        return success

    return first_flip(((per_class, 0),) * num_values, flips)


class Concentration(BatchedEnv):
    """Turn every card face up by flipping matching pairs (popgym's Concentration).

    A shoe of 52d cards (d = num_decks) is shuffled and laid face down; a card's class is its
    colour (num_values = 2) or rank (13), numbered as popgym numbers them. Flips alternate
    between the first and the second card of a pair. Rewards (L = ceil(2n - n / (2n - 1)),
    n = 52d: popgym's episode length): two cards of one class (two different cards) stay face
    up and earn +2/n (n/2 pairs: +1 in all); two of different classes, or the same card twice,
    earn -2/L and are turned back down; a flip of a card already face up earns -1/L (first card
    of a pair) or -2/L (second) and ends the pair. The episode terminates when every card is
    face up and is truncated after L flips (popgym flags both when the last flip wins; memrl
    reports that as terminated).
    Observation (n * (num_values + 1)): popgym's MultiDiscrete observation, one block per
    card position in order, the one-hot of the card's class if it is face up or was flipped
    this step (an unmatched pair shows both its cards for one step), else of the face-down
    symbol num_values. Actions (n): the card position to flip.

    success = every card face up within the L flips. `oracle_action` reads the layout: it
    flips the first face-down card, then one of its class, so it wins in n flips with return
    1. popgym derives L from the expected flips of a player with perfect memory that does not
    peek (its source cites a math.stackexchange answer), so such a player is not sure to win
    within L. `memoryless_action` flips a uniformly random card the observation shows face
    down; it wins with probability `chance_success`, computed exactly by dynamic programming
    over the face-down counts per class: 0.52 / 0.50 / 1e-14 for Easy / Medium / Hard (with
    colours any two cards of a colour pair up, so winning within L hardly needs memory). That
    is what the uniform flipper reaches, not a proven bound on every memoryless policy.
    """

    obs_low = 0.0
    obs_high = 1.0

    def __init__(
        self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, *, num_decks: int = 1, num_values: int = 2
    ):
        if isinstance(num_decks, bool) or not isinstance(num_decks, int) or num_decks <= 0:
            raise ValueError(f"num_decks must be a positive integer, got {num_decks!r}")
        if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values not in (2, 13):
            raise ValueError(f"num_values must be 2 (colours) or 13 (ranks), got {num_values!r}")
        self.num_decks = num_decks
        self.num_values = num_values
        self.num_cards = CARDS_PER_DECK * num_decks
        n = self.num_cards
        self.max_episode_steps = math.ceil(2 * n - n / (2 * n - 1))
        self.obs_dim = n * (num_values + 1)
        self.num_actions = n
        super().__init__(num_envs, device, seed)
        self.base_layout = torch.arange(n, device=self.device) % num_values
        self.layout = torch.zeros(num_envs, n, dtype=torch.int64, device=self.device)
        """Each position's card class, int64 [N, n]."""
        self.face_up = torch.zeros(num_envs, n, dtype=torch.bool, device=self.device)
        self.shown = torch.zeros_like(self.face_up)
        """The cards the observation shows: face up, or flipped this step, bool [N, n]."""
        self.held = torch.full((num_envs,), -1, dtype=torch.int64, device=self.device)
        """The position of the first card of the pair being played, -1 if none, int64 [N]."""
        self.block_starts = torch.arange(n, device=self.device) * (num_values + 1)
        """Where each card's one-hot block starts in the observation, int64 [n]."""

    @property
    def chance_success(self) -> float:
        """Computed on first use (seconds for Medium and Hard), not when the env is built: every
        process that imports `envs` builds one of each to register it with gymnasium."""
        return _uniform_flipper_success(self.num_cards // self.num_values, self.num_values, self.max_episode_steps)

    def _draw_layout(self, keys: torch.Tensor) -> torch.Tensor:
        """A shuffled shoe per row of `keys` (float32 [K, n] uniform in [0, 1)): the shoe's cards in the
        order of their keys, int64 [K, n] card classes."""
        return self.base_layout[keys.argsort(1)]

    def _start_episodes(self, mask: torch.Tensor) -> None:
        keys = self.random(self.num_envs, self.num_cards)
        rows = self._restart_rows(mask)
        if rows is None:
            self.layout = torch.where(mask[:, None], self._draw_layout(keys), self.layout)
        elif rows.numel() == 0:
            return
        else:
            self.layout[rows] = self._draw_layout(keys[rows])
        self.face_up.masked_fill_(mask[:, None], False)
        self.shown.masked_fill_(mask[:, None], False)
        self.held.masked_fill_(mask, -1)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flipped = action.long()[:, None]
        holding = self.held >= 0
        held = self.held.clamp(min=0)[:, None]
        self.shown = self.face_up.clone()
        self.shown.scatter_(1, flipped, True)
        self.shown.scatter_(1, held, self.shown.gather(1, held) | holding[:, None])
        already_up = self.face_up.gather(1, flipped).squeeze(1)
        same_class = (self.layout.gather(1, flipped) == self.layout.gather(1, held)) & (flipped != held)
        matched = holding & ~already_up & same_class.squeeze(1)
        failure = -1.0 / self.max_episode_steps
        reward = torch.where(already_up, torch.where(holding, 2 * failure, failure), 0.0)
        reward = torch.where(holding & ~already_up, torch.where(matched, 2.0 / self.num_cards, 2 * failure), reward)
        self.face_up.scatter_(1, flipped, self.face_up.gather(1, flipped) | matched[:, None])
        self.face_up.scatter_(1, held, self.face_up.gather(1, held) | matched[:, None])
        self.held = torch.where(holding | already_up, -1, flipped.squeeze(1))
        terminated = self.face_up.all(1)
        return reward, terminated, terminated

    def _observe(self) -> torch.Tensor:
        shown_class = torch.where(self.shown, self.layout, self.num_values)
        obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        return obs.scatter_(1, shown_class + self.block_starts, 1.0)

    def oracle_action(self) -> torch.Tensor:
        """The first face-down card; with a card held, the first other face-down card of its class."""
        face_down = ~self.face_up
        held = self.held.clamp(min=0)
        positions = torch.arange(self.num_cards, device=self.device)
        partner = face_down & (self.layout == self.layout.gather(1, held[:, None])) & (positions != held[:, None])
        return torch.where(self.held >= 0, partner.long().argmax(1), face_down.long().argmax(1))

    def memoryless_action(self, obs: torch.Tensor) -> torch.Tensor:
        """A uniformly random card the observation shows face down."""
        face_down = obs.reshape(obs.shape[0], self.num_cards, self.num_values + 1)[:, :, self.num_values] > 0
        return torch.where(face_down, self.random(obs.shape[0], self.num_cards), -1.0).argmax(1)


LEVELS = {"easy": (1, 2), "medium": (2, 2), "hard": (1, 13)}
"""popgym 1.0.7's levels: (num_decks, num_values): colours with 1 and 2 decks, ranks with 1."""

PRESETS: dict[str, tuple[type[BatchedEnv], dict]] = {
    f"popgym-concentration-{level}": (Concentration, {"num_decks": decks, "num_values": values})
    for level, (decks, values) in LEVELS.items()
}

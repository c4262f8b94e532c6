"""memrl's POPGym envs played side by side with popgym 1.0.7 on the same randomness.

    python scripts/popgym_parity.py                      # every ported preset, writes benchmarks/popgym_parity.md
    python scripts/popgym_parity.py --episodes 5 --presets repeat-previous-easy

For each episode, popgym's env is reset with a seed and its randomness is read out of it: the
order in which it will deal its shuffled deck(s) (popgym deals `deck.idx` from the end), the
bandits' probabilities and a copy of its generator for the pulls to come, or the Battleship /
MineSweeper board / Concentration layout / Labyrinth maze with its start and goal;
memrl's env (one env, CPU) is made to deal the same card classes / use the same draws / board. Both
are then driven by the same actions, chosen by a policy from popgym's observations: the oracle, an
off-by-one policy (the mistake of a port one step out of line) or seeded uniform random answers. Every step, memrl's
observation must equal the encoding of popgym's and the rewards and terminations must agree;
the episodes' returns and lengths are compared. tests/envs/test_popgym.py runs the same code.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from envs.popgym import CARD_TASKS, PRESETS, Autoencode, CountRecall, HigherLower, RepeatFirst, RepeatPrevious  # noqa: E402
from envs.popgym_bandit import MultiarmedBandit  # noqa: E402
from envs.popgym_battleship import Battleship  # noqa: E402
from envs.popgym_cartpole import PositionOnlyCartPole  # noqa: E402
from envs.popgym_concentration import Concentration  # noqa: E402
from envs.popgym_labyrinth import LabyrinthEscape, LabyrinthExplore, Labyrinth  # noqa: E402
from envs.popgym_minesweeper import MineSweeper  # noqa: E402
from envs.popgym_pendulum import MAX_TORQUE, PositionOnlyPendulum  # noqa: E402

LEVELS = ("easy", "medium", "hard")
CARD_PRESETS = [f"{task}-{level}" for task in CARD_TASKS for level in LEVELS]
PORTED_PRESETS = CARD_PRESETS + [
    f"popgym-{env}-{level}"
    for env in (
        "higher-lower", "multiarmed-bandit", "position-only-cart-pole", "noisy-position-only-cart-pole", "battleship", "mine-sweeper",
        "concentration", "position-only-pendulum", "noisy-position-only-pendulum", "labyrinth-escape", "labyrinth-explore",
    )
    for level in LEVELS
]
"""Every preset with a popgym 1.0.7 counterpart (the popgym-<card task>-<level> names repeat CARD_PRESETS)."""
POPGYM_NAMES = sorted(name for name in PRESETS if name.startswith("popgym-"))
"""memrl's popgym-<env>-<level> names: one per popgym 1.0.7 env and level memrl has."""
POLICIES = ("oracle", "off-by-one", "random")
OBSERVATION_TOLERANCE = 1e-4
"""Largest difference allowed between an observation entry of memrl and popgym: one-hot entries
agree exactly; CartPole's and Pendulum's float64 sin/cos may differ from numpy's in the last bit,
which the unstable pole amplifies over hundreds of steps (Pendulum's float32 observations have
steps of 6e-8 near +-1)."""
RANDOM_TORQUE = 1.25 * MAX_TORQUE
"""The random policy's Pendulum torques are uniform in +-2.5 N m, so a fifth of them are clipped."""


def popgym_class_name(name: str) -> str:
    """'repeat-previous-easy' or 'popgym-repeat-previous-easy' -> 'RepeatPreviousEasy' (popgym's class)."""
    return "".join(part.capitalize() for part in name.removeprefix("popgym-").split("-"))


def make_popgym_env(name: str):
    """popgym's env for a memrl preset name (imports popgym: the dev extra)."""
    import popgym.envs as popgym_envs

    return getattr(popgym_envs, popgym_class_name(name))()


def dealing_order(popgym_env) -> dict[str, list[int]]:
    """The card classes popgym will deal, in order, per memrl shoe name (call after reset)."""
    if type(popgym_env).__name__.startswith("HigherLower"):
        return {"cards_left": popgym_env.deck.ranks_idx[popgym_env.deck.idx[::-1]].tolist()}
    if hasattr(popgym_env, "value_deck"):
        return {
            "cards_left": popgym_env.deck_idx_type[popgym_env.value_deck.idx[::-1]].tolist(),
            "queries_left": popgym_env.deck_idx_type[popgym_env.query_deck.idx[::-1]].tolist(),
        }
    return {"cards_left": popgym_env.deck.suits_idx[popgym_env.deck.idx[::-1]].tolist()}


def dealing_env(task_class: type, kwargs: dict, order: dict[str, list[int]]):
    """A one-env CPU `task_class(**kwargs)` whose shoes deal the card classes of `order`, by shoe
    name ("cards_left", CountRecall's "queries_left"), in order; an exhausted list deals nothing."""

    class Dealt(task_class):
        def _draw_card_class(self, shoe: torch.Tensor) -> torch.Tensor:
            shoe_name = "queries_left" if shoe is getattr(self, "queries_left", None) else "cards_left"
            dealt = self.num_cards - int(shoe.sum())
            cards = order[shoe_name]
            return torch.tensor([cards[dealt] if dealt < len(cards) else -1], device=self.device)

    return Dealt(num_envs=1, seed=0, **kwargs)


def bandit_env(kwargs: dict, popgym_env):
    """A one-env CPU MultiarmedBandit with popgym's probabilities (call after reset) whose pulls
    use the draws popgym's generator will make."""
    probabilities = torch.from_numpy(popgym_env.bandits.copy())[None]
    pulls = copy.deepcopy(popgym_env.np_random)

    class Aligned(MultiarmedBandit):
        def _draw_payout_probabilities(self) -> torch.Tensor:
            return probabilities

        def _draw_pull(self) -> torch.Tensor:
            return torch.tensor([pulls.random()], dtype=torch.float64)

    return Aligned(num_envs=1, seed=0, **kwargs)


START_STATE_DRAWS = {
    PositionOnlyCartPole: lambda generator: generator.uniform(low=-0.05, high=0.05, size=(4,)),
    PositionOnlyPendulum: lambda generator: generator.uniform(low=[-np.pi, -1.0], high=[np.pi, 1.0]),
}
"""The draws popgym's reset makes for the start state (gymnasium's CartPole and Pendulum), by memrl class."""


def start_state_env(task_class: type, kwargs: dict, popgym_env, seed: int):
    """A one-env CPU `task_class` (CartPole or Pendulum) starting from popgym's state (call after reset
    with `seed`) whose observation noise is the draws popgym's generator makes after that state."""
    from gymnasium.utils import seeding

    start = torch.from_numpy(np.array(popgym_env.state, dtype=np.float64))[None]
    generator = seeding.np_random(seed)[0]
    START_STATE_DRAWS[task_class](generator)
    sigma = getattr(popgym_env, "noise_sigma", None)

    class Aligned(task_class):
        def _draw_initial_state(self) -> torch.Tensor:
            return start

        def _draw_noise(self, used: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(generator.normal(0, sigma))[None] if bool(used[0]) else torch.zeros(1, 2, dtype=torch.float64)

    return Aligned(num_envs=1, seed=0, **kwargs)


def battleship_env(kwargs: dict, popgym_env):
    """A one-env CPU Battleship whose board is popgym's (call after reset), square row * B + column."""
    board = torch.from_numpy(popgym_env.board.astype(bool).reshape(1, -1))

    class Aligned(Battleship):
        def _draw_board(self, draws: torch.Tensor) -> torch.Tensor:
            return board

    return Aligned(num_envs=1, seed=0, **kwargs)


def minesweeper_env(kwargs: dict, popgym_env):
    """A one-env CPU MineSweeper whose mines are popgym's (call after reset), square row * B + column."""
    mines = torch.from_numpy((popgym_env.hidden_grid == 1).reshape(1, -1))

    class Aligned(MineSweeper):
        def _draw_mines(self, keys: torch.Tensor) -> torch.Tensor:
            return mines

    return Aligned(num_envs=1, seed=0, **kwargs)


def concentration_env(kwargs: dict, popgym_env):
    """A one-env CPU Concentration laid out as popgym's cards (call after reset), popgym's class numbers."""
    layout = torch.from_numpy(popgym_env.state.copy())[None]

    class Aligned(Concentration):
        def _draw_layout(self, keys: torch.Tensor) -> torch.Tensor:
            return layout

    return Aligned(num_envs=1, seed=0, **kwargs)


def labyrinth_env(task_class: type, kwargs: dict, popgym_env):
    """A one-env CPU LabyrinthEscape / LabyrinthExplore in popgym's maze (call after reset): its grid
    of cell values (START and Escape's GOAL marked), start and goal, square row * S + column; memrl's
    own generator, whose mazes would go unused, is idle."""
    grid = torch.from_numpy(popgym_env.maze.grid.astype(np.int64).reshape(1, -1))
    side = popgym_env.maze.grid.shape[1]
    start = torch.tensor([popgym_env.maze.start[0] * side + popgym_env.maze.start[1]])
    goal = torch.tensor([popgym_env.maze.end[0] * side + popgym_env.maze.end[1]])

    class Aligned(task_class):
        def _next_mazes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return grid.clone(), start, goal

        def _grow_next_mazes(self) -> None:
            self.next_done.fill_(True)

    return Aligned(num_envs=1, seed=0, **kwargs)


def popgym_action(env, action: int | float):
    """memrl's action as popgym's env takes it: a Battleship or MineSweeper square index as (row, column),
    a Pendulum torque as a float32 array [1]."""
    if isinstance(env, PositionOnlyPendulum):
        return np.array([action], dtype=np.float32)
    return np.array(divmod(action, env.board_size)) if isinstance(env, (Battleship, MineSweeper)) else action


def memrl_action(env, action: int | float) -> torch.Tensor:
    """One env's action as memrl's batched env takes it: int64 [1], or float32 [1, 1] for Pendulum."""
    return torch.tensor([[action]], dtype=torch.float32) if isinstance(env, PositionOnlyPendulum) else torch.tensor([action])


def own_oracle(env) -> int | float:
    """memrl's `oracle_action()` of its one env, as a policy returns an action."""
    action = env.oracle_action()[0]
    return float(action[0]) if isinstance(env, PositionOnlyPendulum) else int(action)


def aligned_env(name: str, popgym_env, seed: int):
    """memrl's env for preset `name` using the randomness of `popgym_env` (just reset with `seed`)."""
    task_class, kwargs = PRESETS[name]
    if task_class is MultiarmedBandit:
        return bandit_env(kwargs, popgym_env)
    if task_class in START_STATE_DRAWS:
        return start_state_env(task_class, kwargs, popgym_env, seed)
    if task_class is Battleship:
        return battleship_env(kwargs, popgym_env)
    if task_class is MineSweeper:
        return minesweeper_env(kwargs, popgym_env)
    if task_class is Concentration:
        return concentration_env(kwargs, popgym_env)
    if task_class in (LabyrinthEscape, LabyrinthExplore):
        return labyrinth_env(task_class, kwargs, popgym_env)
    return dealing_env(task_class, kwargs, dealing_order(popgym_env))


def encode(env, popgym_obs) -> np.ndarray:
    """popgym's observation as memrl encodes it: concatenated one-hots of its components."""
    if isinstance(env, Autoencode):
        mode, suit = popgym_obs
        parts = [(mode, 2), (suit, 4)]
    elif isinstance(env, CountRecall):
        parts = [(int(value), env.num_values) for value in popgym_obs]
    elif isinstance(env, (PositionOnlyCartPole, PositionOnlyPendulum)):
        return np.asarray(popgym_obs, dtype=np.float32)
    elif isinstance(env, Concentration):
        parts = [(value, env.num_values + 1) for value in popgym_obs]
    elif isinstance(env, Labyrinth):
        parts = [(value, 5) for value in popgym_obs]
    else:
        parts = [(popgym_obs, env.obs_dim)]
    return np.concatenate([np.eye(size, dtype=np.float32)[int(index)] for index, size in parts])


Policy = Callable[[object, list, int], int]
"""policy(memrl env (for its settings), popgym observations so far, step index) -> action."""


def oracle(env, history: list, t: int) -> int | float:
    if isinstance(env, (MultiarmedBandit, PositionOnlyCartPole, Battleship, MineSweeper, Concentration, PositionOnlyPendulum, Labyrinth)):
        return own_oracle(env)
    if isinstance(env, HigherLower):
        return _count_cards(env, history[: t + 1], int(history[t]))
    if isinstance(env, RepeatFirst):
        return int(history[0])
    if isinstance(env, RepeatPrevious):
        return int(history[t - env.k + 1]) if t >= env.k - 1 else 0
    if isinstance(env, CountRecall):
        query = history[t][1]
        return sum(int(value == query) for value, _ in history[: t + 1])
    first_play_step = env.num_cards - 1
    return int(history[2 * first_play_step - t][1]) if t >= first_play_step else 0


def _count_cards(env, seen: list, shown_rank: int) -> int:
    """HigherLower's card counter: higher (0) unless more cards of lower rank are left than higher."""
    left = [env.cards_per_class - seen.count(rank) for rank in range(env.num_classes)]
    return 0 if sum(left[shown_rank + 1 :]) >= sum(left[:shown_rank]) else 1


def off_by_one(env, history: list, t: int) -> int:
    """The oracle one card out: the second card, k back, the count before this card, the next card
    back, a counter that forgets the card shown; on the bandit, the arm after the best; on CartPole,
    pushing towards the lean seen (no velocities); on Pendulum, full torque towards upright from the
    position seen; on Battleship and MineSweeper, the square after the oracle's; on Concentration,
    the card after the oracle's; in a Labyrinth, the move after the oracle's."""
    if isinstance(env, (MultiarmedBandit, Battleship, MineSweeper, Concentration, Labyrinth)):
        return (int(env.oracle_action()[0]) + 1) % env.num_actions
    if isinstance(env, PositionOnlyCartPole):
        return int(history[t][1] > 0)
    if isinstance(env, PositionOnlyPendulum):
        return float(-MAX_TORQUE * np.sign(history[t][1]))
    if isinstance(env, HigherLower):
        return _count_cards(env, history[:t], int(history[t]))
    if isinstance(env, RepeatFirst):
        return int(history[min(t, 1)])
    if isinstance(env, RepeatPrevious):
        return int(history[t - env.k]) if t >= env.k else 0
    if isinstance(env, CountRecall):
        query = history[t][1]
        return sum(int(value == query) for value, _ in history[:t])
    first_play_step = env.num_cards - 1
    index = 2 * first_play_step - t - 1
    return int(history[index][1]) if t >= first_play_step and index >= 0 else 0


def random_policy(seed: int) -> Policy:
    """Uniform actions: a uniform Discrete action, or a float32 Pendulum torque uniform in +-RANDOM_TORQUE."""
    generator = np.random.default_rng(seed)

    def act(env, history: list, t: int) -> int | float:
        if isinstance(env, PositionOnlyPendulum):
            return float(np.float32(generator.uniform(-RANDOM_TORQUE, RANDOM_TORQUE)))
        return int(generator.integers(env.num_actions))

    return act


@dataclass
class SideBySide:
    popgym_return: float
    memrl_return: float
    popgym_length: int
    memrl_length: int
    mismatches: list[str]
    """Every step where the two disagreed (observation, reward, termination), in words; empty if none."""
    oracle_agrees: bool
    """memrl's `oracle_action()` (hidden state) equalled the history oracle at every step."""


def play_side_by_side(name: str, policy: Policy, seed: int) -> SideBySide:
    """One episode of preset `name` on popgym (reset with `seed`) and on memrl, same cards, same actions."""
    reference = make_popgym_env(name)
    popgym_obs, _ = reference.reset(seed=seed)
    env = aligned_env(name, reference, seed)
    obs, _ = env.reset()
    history, mismatches, oracle_agrees = [popgym_obs], [], True
    popgym_return = memrl_return = 0.0
    popgym_done = memrl_done = False
    t = 0
    while not popgym_done and t < env.max_episode_steps + 1:
        if not np.allclose(obs[0].numpy(), encode(env, popgym_obs), rtol=0, atol=OBSERVATION_TOLERANCE):
            mismatches.append(f"step {t}: memrl shows {obs[0].tolist()}, popgym {popgym_obs}")
        action = policy(env, history, t)
        oracle_agrees &= own_oracle(env) == oracle(env, history, t)
        popgym_obs, popgym_reward, popgym_terminated, popgym_truncated, _ = reference.step(popgym_action(env, action))
        popgym_truncated = bool(popgym_truncated) and not popgym_terminated  # memrl reports an episode that ends both ways as terminated
        popgym_done = popgym_terminated or popgym_truncated
        obs, reward, terminated, truncated, info = env.step(memrl_action(env, action))
        if abs(float(reward[0]) - popgym_reward) > 1e-6:
            mismatches.append(f"step {t}: memrl reward {float(reward[0]):.6f}, popgym {popgym_reward:.6f}")
        memrl_ended = (bool(terminated[0]), bool(truncated[0]))
        if memrl_ended != (popgym_terminated, popgym_truncated):
            mismatches.append(f"step {t}: memrl (terminated, truncated) {memrl_ended}, popgym {(popgym_terminated, popgym_truncated)}")
        popgym_return += popgym_reward
        memrl_return += float(reward[0])
        memrl_done |= bool(terminated[0] | truncated[0])
        if popgym_done and not np.allclose(info["final_obs"][0].numpy(), encode(env, popgym_obs), rtol=0, atol=OBSERVATION_TOLERANCE):
            mismatches.append(f"final observation: memrl {info['final_obs'][0].tolist()}, popgym {popgym_obs}")
        history.append(popgym_obs)
        t += 1
    memrl_length = int(info["episode_length"][0]) if memrl_done else t
    return SideBySide(popgym_return, memrl_return, t, memrl_length, mismatches, oracle_agrees)


def make_policy(policy_name: str, seed: int) -> Policy:
    return {"oracle": oracle, "off-by-one": off_by_one}.get(policy_name) or random_policy(seed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=PORTED_PRESETS, help="presets to compare")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per preset and policy (popgym seeds 0 ..)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "popgym_parity.md", help="markdown file to write")
    args = parser.parse_args(argv)
    unknown = [name for name in args.presets if name not in PORTED_PRESETS]
    if unknown:
        parser.error(f"unknown preset {unknown[0]!r}; choose from: {', '.join(PORTED_PRESETS)}")
    if args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    return args


def main(argv: list[str] | None = None) -> None:
    from agents.run import write_atomically
    from scripts.bench_envs import git_commit

    args = parse_args(argv)
    import popgym

    lines = [
        "# POPGym envs: memrl vs popgym 1.0.7, same randomness",
        "",
        "Mean episode return (and length) of each policy over the same episodes on popgym's env and on",
        "memrl's port using popgym's cards / draws (scripts/popgym_parity.py). `mismatched steps` counts the",
        "steps where an observation, reward or termination differed (0 means step-for-step equal).",
        "oracle: perfect memory; off-by-one: one card out (RepeatFirst answers the second card,",
        "RepeatPrevious k back instead of k - 1, CountRecall the count before the card shown, Autoencode",
        "the next card back, HigherLower a card counter that forgets the card shown, MultiarmedBandit the",
        "arm after the best, CartPole pushing towards the lean seen, Pendulum full torque towards upright from",
        "the position seen, Battleship and MineSweeper the square after the oracle's, Concentration the card",
        "after the oracle's, LabyrinthEscape / LabyrinthExplore the move after the oracle's",
        "shortest-path move);",
        "random: uniform actions (numpy seed = episode seed; Pendulum torques uniform in +-2.5, so some are",
        "clipped). Observations agree within 1e-4 (CartPole's and Pendulum's float64 sin/cos may differ in",
        "the last bit). Battleship's and MineSweeper's actions reach popgym as (row, column). The Labyrinths play in popgym's maze (its grid, start and goal copied into memrl's env).",
        "",
        f"- popgym {popgym.__version__ if hasattr(popgym, '__version__') else '1.0.7'}, torch {torch.__version__}, Python {platform.python_version()}, CPU",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- commit: {git_commit()}",
        f"- command: `{shlex.join(['python', 'scripts/popgym_parity.py', *sys.argv[1:]])}`",
        f"- episodes: {args.episodes} per preset and policy, popgym reset seeds 0 .. {args.episodes - 1}",
        "",
        "| preset | popgym id | policy | popgym return | memrl return | popgym length | memrl length | mismatched steps |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.presets:
        for policy_name in POLICIES:
            results = [play_side_by_side(name, make_policy(policy_name, seed), seed) for seed in range(args.episodes)]
            row = [
                name,
                f"popgym-{popgym_class_name(name)}-v0",
                policy_name,
                f"{np.mean([r.popgym_return for r in results]):+.4f}",
                f"{np.mean([r.memrl_return for r in results]):+.4f}",
                f"{np.mean([r.popgym_length for r in results]):.0f}",
                f"{np.mean([r.memrl_length for r in results]):.0f}",
                str(sum(len(r.mismatches) for r in results)),
            ]
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    write_atomically(args.output, ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

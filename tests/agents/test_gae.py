"""GAE against hand-computed cases: truncation bootstraps from the final observation's value,
termination does not, and advantages never flow across an episode end."""

import torch

from agents.ppo import compute_gae

GAMMA, LAMBDA = 0.5, 0.5


def run_gae(terminated, truncated):
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    final_values = torch.tensor([[0.0, 4.0, 0.0]])
    last_value = torch.tensor([2.0])
    return compute_gae(rewards, values, torch.tensor([terminated]), torch.tensor([truncated]),
                       final_values, last_value, GAMMA, LAMBDA)


def test_truncation_bootstraps_from_the_final_observation():
    advantages, returns = run_gae([False, False, False], [False, True, False])
    # deltas: 1 + .5*1 - .5 = 1;  2 + .5*4 (final value) - 1 = 3;  3 + .5*2 (last value) - 1.5 = 2.5
    # advantages: t2 = 2.5; t1 = 3 (episode ended: nothing flows back); t0 = 1 + .25*3 = 1.75
    torch.testing.assert_close(advantages, torch.tensor([[1.75, 3.0, 2.5]]))
    torch.testing.assert_close(returns, torch.tensor([[2.25, 4.0, 4.0]]))


def test_termination_does_not_bootstrap():
    advantages, _ = run_gae([False, True, False], [False, False, False])
    # delta1 = 2 + 0 - 1 = 1; advantage0 = 1 + .25*1 = 1.25
    torch.testing.assert_close(advantages, torch.tensor([[1.25, 1.0, 2.5]]))


def test_no_episode_end_is_plain_gae():
    advantages, _ = run_gae([False, False, False], [False, False, False])
    # deltas: 1, 2 + .5*1.5 - 1 = 1.75, 2.5; advantages: 2.5, 1.75 + .25*2.5 = 2.375, 1 + .25*2.375
    torch.testing.assert_close(advantages, torch.tensor([[1.59375, 2.375, 2.5]]))


def test_termination_wins_when_the_env_reports_both_flags():
    advantages, _ = run_gae([False, True, False], [False, True, False])
    # the episode ended at t1: no bootstrap from the final value 4, exactly as plain termination
    torch.testing.assert_close(advantages, torch.tensor([[1.25, 1.0, 2.5]]))

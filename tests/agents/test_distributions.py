"""symlog/symexp, two-hot bins, unimix categoricals, KL with free bits, the bounded Normal."""

from __future__ import annotations

import pytest
import torch

from agents.distributions import BoundedNormal, TwoHot, UnimixCategorical, categorical_kl, free_bits, symexp, symlog


def test_symexp_inverts_symlog_across_scales():
    values = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 7.0, 1e4, 1e6], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(values)), values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(symlog(symexp(values.clamp(-30, 30))), values.clamp(-30, 30))
    assert symlog(torch.tensor(1e6)).item() == pytest.approx(13.8155, abs=1e-3)


def test_symlog_has_slope_one_at_zero():
    x = torch.zeros(3, requires_grad=True)
    symlog(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3))


def test_two_hot_encode_puts_the_expected_bin_on_symlog_of_the_value():
    two_hot = TwoHot(num_bins=255)
    values = torch.tensor([-3000.0, -2.5, -1.0, 0.0, 0.01, 0.7, 1.0, 42.0, 1e5])
    weights = two_hot.encode(values)
    assert weights.shape == (9, 255)
    torch.testing.assert_close(weights.sum(-1), torch.ones(9))
    assert (weights >= 0).all() and ((weights > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(weights @ two_hot.bins, symlog(values), rtol=1e-5, atol=1e-5)


def test_two_hot_decode_of_encoded_targets_round_trips():
    two_hot = TwoHot(num_bins=255)
    values = torch.tensor([-500.0, -1.0, 0.0, 0.3, 1.0, 17.0, 1e4])
    logits = two_hot.encode(values).log()  # exact zeros become -inf, softmax gives them back
    torch.testing.assert_close(two_hot.decode(logits), values, rtol=1e-4, atol=1e-5)


def test_two_hot_clips_values_beyond_the_outer_bins():
    two_hot = TwoHot(num_bins=11, low=-2.0, high=2.0)
    weights = two_hot.encode(torch.tensor([-1e9, 1e9]))
    assert weights[0, 0] == 1.0 and weights[1, -1] == 1.0


def test_two_hot_loss_is_smallest_at_the_encoded_target():
    two_hot = TwoHot(num_bins=41)
    values = torch.tensor([0.0, 2.0, -5.0])
    exact = two_hot.loss(two_hot.encode(values).clamp(min=1e-12).log(), values)
    shifted = two_hot.loss(two_hot.encode(values + 1.0).clamp(min=1e-12).log(), values)
    assert (exact < shifted).all()
    with pytest.raises(ValueError, match="num_bins >= 2"):
        TwoHot(num_bins=1)


def test_unimix_keeps_every_class_possible():
    logits = torch.tensor([[50.0, -50.0, -50.0, -50.0]])
    mixed = UnimixCategorical(logits, unimix=0.01)
    torch.testing.assert_close(mixed.probs.sum(-1), torch.ones(1))
    assert mixed.probs.min().item() == pytest.approx(0.01 / 4, rel=1e-4)
    assert torch.isfinite(mixed.logits).all()
    assert mixed.entropy().item() > 0.0
    plain = UnimixCategorical(logits, unimix=0.0)
    torch.testing.assert_close(plain.probs, logits.softmax(-1))
    with pytest.raises(ValueError, match="unimix must be in"):
        UnimixCategorical(logits, unimix=1.0)


def test_unimix_samples_are_one_hot_with_straight_through_gradients():
    torch.manual_seed(0)
    logits = torch.randn(64, 8, 5, requires_grad=True)
    distribution = UnimixCategorical(logits, unimix=0.01)
    sample = distribution.sample()
    assert sample.shape == (64, 8, 5)
    torch.testing.assert_close(sample.detach().sum(-1), torch.ones(64, 8))
    torch.testing.assert_close(sample.detach(), sample.detach().round(), rtol=0, atol=1e-6)
    (sample * torch.randn_like(sample)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 1e-3
    torch.testing.assert_close(distribution.mode().argmax(-1), logits.argmax(-1))


def test_unimix_sampling_frequencies_follow_the_mixed_probabilities():
    torch.manual_seed(1)
    distribution = UnimixCategorical(torch.tensor([2.0, 0.0, -30.0]).expand(20000, 3), unimix=0.3)
    frequencies = distribution.sample().mean(0)
    torch.testing.assert_close(frequencies, distribution.probs[0], atol=0.015, rtol=0)
    assert frequencies[2] > 0.08  # the -30 logit is drawn only through the uniform part (0.1)


def test_categorical_kl_is_zero_for_equal_and_matches_the_definition():
    torch.manual_seed(2)
    p = torch.randn(3, 4, 6).log_softmax(-1)
    q = torch.randn(3, 4, 6).log_softmax(-1)
    torch.testing.assert_close(categorical_kl(p, p), torch.zeros(3))
    manual = (p.exp() * (p - q)).sum(-1).sum(-1)
    torch.testing.assert_close(categorical_kl(p, q), manual)
    assert (categorical_kl(p, q) > 0).all()


def test_free_bits_are_flat_below_the_threshold_and_exact_above():
    kl = torch.tensor([0.2, 0.99, 1.5, 3.0], requires_grad=True)
    clipped = free_bits(kl, free=1.0)
    torch.testing.assert_close(clipped.detach(), torch.tensor([1.0, 1.0, 1.5, 3.0]))
    clipped.sum().backward()
    torch.testing.assert_close(kl.grad, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_free_bits_stop_the_kl_gradient_to_the_logits_once_close_enough():
    prior = torch.tensor([[0.0, 0.0]]).log_softmax(-1)[None]
    close = torch.tensor([[0.1, -0.1]], requires_grad=True)
    # Far enough for a KL (0.68 nats) above the free bits, not so saturated that its gradient (~1e-6 at
    # logits +-8) sits near float32 rounding noise.
    far = torch.tensor([[3.0, -3.0]], requires_grad=True)
    free_bits(categorical_kl(close.log_softmax(-1)[None], prior), 1.0).sum().backward()
    free_bits(categorical_kl(far.log_softmax(-1)[None], prior), 0.1).sum().backward()
    assert close.grad.abs().sum() == 0
    assert far.grad.abs().sum() > 1e-3


def test_bounded_normal_stays_in_range():
    torch.manual_seed(3)
    mean_logits = torch.randn(1000, 2) * 5
    std_logits = torch.randn(1000, 2) * 5
    distribution = BoundedNormal(mean_logits, std_logits, min_std=0.1, max_std=1.0)
    sample = distribution.sample()
    assert sample.min() >= -1.0 and sample.max() <= 1.0
    torch.testing.assert_close(distribution.mode(), torch.tanh(mean_logits))
    std = distribution.normal.stddev
    assert std.min() >= 0.1 and std.max() <= 1.0
    assert distribution.log_prob(sample).shape == (1000,) and distribution.entropy().shape == (1000,)

"""Behaviour specific to memrl's own backbones, beyond the shared contract: the transformer's
sliding window, the memory tokens' learned initial state, and LSTM/GRU agreeing with torch.nn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memory import make_backbone

INPUT_DIM, HIDDEN_DIM = 5, 8


def random_inputs(batch_size: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, length, INPUT_DIM, generator=generator, dtype=torch.float64)


def no_reset(batch_size: int, length: int) -> torch.Tensor:
    return torch.zeros(batch_size, length, dtype=torch.bool)


@pytest.mark.parametrize("name, reference_class", [("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_recurrent_backbones_match_torch_nn(name, reference_class):
    torch.manual_seed(0)
    backbone = make_backbone(name, INPUT_DIM, HIDDEN_DIM, num_layers=2).double()
    reference = reference_class(INPUT_DIM, HIDDEN_DIM, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for layer, cell in enumerate(backbone.cells):
            for parameter in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{parameter}_l{layer}").copy_(getattr(cell, parameter))
    x = random_inputs(3, 17)
    state = {key: torch.randn_like(value) for key, value in backbone.initial_state(3).items()}
    with torch.no_grad():
        y, final = backbone(x, state, no_reset(3, 17))
        if name == "lstm":
            initial = (state["hidden"].transpose(0, 1).contiguous(), state["cell"].transpose(0, 1).contiguous())
            y_reference, (hidden, cell) = reference(x, initial)
            torch.testing.assert_close(final["cell"], cell.transpose(0, 1))
        else:
            y_reference, hidden = reference(x, state["hidden"].transpose(0, 1).contiguous())
    torch.testing.assert_close(y, y_reference)
    torch.testing.assert_close(final["hidden"], hidden.transpose(0, 1))


def test_transformer_forgets_steps_beyond_its_receptive_field():
    """Each layer looks W steps back, so two layers see exactly 2W steps into the past."""
    window, num_layers, length, changed_at = 4, 2, 20, 3
    torch.manual_seed(0)
    backbone = make_backbone(
        "transformer", INPUT_DIM, HIDDEN_DIM, num_layers=num_layers, num_heads=2, window=window
    ).double()
    x = random_inputs(2, length)
    changed = x.clone()
    changed[:, changed_at] += 1.0
    with torch.no_grad():
        y, _ = backbone(x, backbone.initial_state(2), no_reset(2, length))
        y_changed, _ = backbone(changed, backbone.initial_state(2), no_reset(2, length))
    horizon = changed_at + num_layers * window
    difference = (y - y_changed).abs().amax(dim=(0, 2))
    assert torch.all(difference[changed_at : horizon + 1] > 1e-6)
    assert torch.all(difference[:changed_at] == 0)
    assert torch.all(difference[horizon + 1 :] == 0)


def test_transformer_chunks_of_any_length_equal_one_forward():
    """Carrying the window between chunks shorter and longer than W changes nothing."""
    torch.manual_seed(0)
    backbone = make_backbone("transformer", INPUT_DIM, HIDDEN_DIM, num_heads=2, window=6).double()
    x = random_inputs(3, 40)
    reset = torch.rand(3, 40, generator=torch.Generator().manual_seed(1)) < 0.1
    with torch.no_grad():
        y_whole, final_whole = backbone(x, backbone.initial_state(3), reset)
        state, outputs, start = backbone.initial_state(3), [], 0
        for chunk in (1, 3, 13, 6, 17):
            y_chunk, state = backbone(x[:, start : start + chunk], state, reset[:, start : start + chunk])
            outputs.append(y_chunk)
            start += chunk
    torch.testing.assert_close(torch.cat(outputs, dim=1), y_whole, rtol=1e-9, atol=1e-9)
    for key in final_whole:
        torch.testing.assert_close(state[key], final_whole[key], rtol=1e-9, atol=1e-9)


def test_transformer_window_holds_the_current_episode_oldest_first():
    window = 5
    torch.manual_seed(0)
    backbone = make_backbone("transformer", INPUT_DIM, HIDDEN_DIM, num_heads=2, window=window).double()
    x = random_inputs(1, 12)
    reset = no_reset(1, 12)
    reset[0, 9] = True
    state = backbone.initial_state(1)
    valid_after_each_step = []
    with torch.no_grad():
        for t in range(12):
            _, state = backbone.step(x[:, t], state, reset[:, t])
            valid_after_each_step.append(state["valid"][0].tolist())
        _, state_two = backbone(x[:, 9:11], backbone.initial_state(1), reset[:, 9:11])
    assert valid_after_each_step[1] == [False, False, False, True, True]
    assert valid_after_each_step[8] == [True] * window
    assert valid_after_each_step[9] == [False, False, False, False, True]
    assert valid_after_each_step[11] == [False, False, True, True, True]
    assert torch.count_nonzero(state["keys"][0, :, :2]) == 0
    # After the reset the newest slots hold the new episode's keys, oldest first.
    torch.testing.assert_close(state["keys"][:, :, 2:4], state_two["keys"][:, :, 3:5], rtol=1e-12, atol=1e-12)


def test_transformer_outputs_depend_only_on_the_position_within_the_episode():
    """The same episode gives the same outputs whether it starts at step 0 or step 30."""
    torch.manual_seed(0)
    backbone = make_backbone("transformer", INPUT_DIM, HIDDEN_DIM, num_heads=2, window=8).double()
    episode = random_inputs(1, 10, seed=3)
    history = random_inputs(1, 30, seed=4)
    reset = no_reset(1, 40)
    reset[0, 30] = True
    with torch.no_grad():
        y_late, _ = backbone(torch.cat([history, episode], dim=1), backbone.initial_state(1), reset)
        y_early, _ = backbone(episode, backbone.initial_state(1), no_reset(1, 10))
    torch.testing.assert_close(y_late[:, 30:], y_early, rtol=1e-9, atol=1e-9)


def test_memory_tokens_train_their_initial_state_through_a_reset():
    torch.manual_seed(0)
    backbone = make_backbone("memory_tokens", INPUT_DIM, HIDDEN_DIM, num_tokens=3, num_heads=2).double()
    carried = {key: value.detach() + 1.0 for key, value in backbone.initial_state(2).items()}
    reset = no_reset(2, 6)
    reset[:, 3] = True
    y, _ = backbone(random_inputs(2, 6), carried, reset)
    # A random projection, not a plain sum: the outputs are LayerNorm'd, so their sum is constant and its
    # gradient is rounding noise (~1e-17), which a count of non-zero entries would accept.
    projection = torch.randn(HIDDEN_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (y[:, 3:] @ projection).sum().backward()
    assert backbone.initial_memory.grad is not None
    assert backbone.initial_memory.grad.abs().min() > 1e-4  # every entry trains (measured min 0.02)


def test_memory_tokens_carry_information_across_many_steps():
    torch.manual_seed(0)
    backbone = make_backbone("memory_tokens", INPUT_DIM, HIDDEN_DIM, num_tokens=2, num_heads=2).double()
    x = random_inputs(1, 30)
    changed = x.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        y, _ = backbone(x, backbone.initial_state(1), no_reset(1, 30))
        y_changed, _ = backbone(changed, backbone.initial_state(1), no_reset(1, 30))
    assert (y[:, -1] - y_changed[:, -1]).abs().max() > 1e-8


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("transformer", {"num_heads": 3}, "hidden_dim must be divisible by num_heads"),
        ("transformer", {"window": 0}, "window must be at least 1"),
        ("memory_tokens", {"num_tokens": 0}, "num_tokens and num_layers must be at least 1"),
        ("lstm", {"num_layers": 0}, "num_layers must be at least 1"),
        ("gru", {"num_layers": 0}, "num_layers must be at least 1"),
    ],
)
def test_bad_options_raise_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_backbone(name, INPUT_DIM, HIDDEN_DIM, **options)

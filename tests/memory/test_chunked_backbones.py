"""The chunk-wise parallel forms (Mamba-2, Gated DeltaNet, mLSTM) against their recurrent `step`.

The contract suite checks every backbone at its initialisation; here the parameters are
randomised (so gates and decays take values far from their initial ones, and mLSTM's
stabiliser is exercised by large input gates), chunks are small and odd so that resets fall
inside chunks, on their first and last steps, and T is not a multiple of the chunk size.
"""

from __future__ import annotations

import pytest
import torch

from memory import make_backbone
from memory.chunked import episode_log_decay, episode_masks

INPUT_DIM, HIDDEN_DIM = 5, 16
CHUNKED = {
    "mamba2": {"chunk_size": 7, "state_size": 8, "head_dim": 8},
    "gated_deltanet": {"chunk_size": 7, "num_heads": 2},
    "mlstm": {"chunk_size": 7, "num_heads": 2},
}


def randomised(name: str, seed: int, scale: float):
    torch.manual_seed(seed)
    backbone = make_backbone(name, INPUT_DIM, HIDDEN_DIM, **CHUNKED[name]).double()
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)
    return backbone


def run_steps(backbone, x, state, reset):
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = backbone.step(x[:, t], state, reset[:, t])
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state


def resets_on_chunk_edges(batch_size: int, length: int, chunk_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    reset = torch.rand(batch_size, length, generator=generator) < 0.15
    reset[0, ::chunk_size] = True  # first step of every chunk
    reset[1, chunk_size - 1::chunk_size] = True  # last step of every chunk
    reset[2] = False  # one sequence never resets
    return reset


@pytest.mark.parametrize("name", sorted(CHUNKED))
@pytest.mark.parametrize("scale", [0.3, 1.5], ids=["moderate", "large"])
def test_chunked_forward_and_gradients_equal_the_recurrence(name, scale):
    backbone = randomised(name, seed=11, scale=scale)
    batch_size, length = 4, 30
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(batch_size, length, INPUT_DIM, generator=generator, dtype=torch.float64) * 2
    reset = resets_on_chunk_edges(batch_size, length, CHUNKED[name]["chunk_size"], seed=13)
    with torch.no_grad():
        _, state = backbone(torch.randn(batch_size, 9, INPUT_DIM, generator=generator, dtype=torch.float64),
                            backbone.initial_state(batch_size), torch.zeros(batch_size, 9, dtype=torch.bool))
    x_chunked, x_steps = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_chunked, final_chunked = backbone(x_chunked, dict(state), reset)
    y_steps, final_steps = run_steps(backbone, x_steps, dict(state), reset)
    torch.testing.assert_close(y_chunked, y_steps, rtol=1e-9, atol=1e-9)
    for key in final_steps:
        torch.testing.assert_close(final_chunked[key], final_steps[key], rtol=1e-9, atol=1e-9)
    projection = torch.randn(HIDDEN_DIM, generator=generator, dtype=torch.float64)
    (y_chunked @ projection).sum().backward()
    (y_steps @ projection).sum().backward()
    torch.testing.assert_close(x_chunked.grad, x_steps.grad, rtol=1e-8, atol=1e-9)


def test_mlstm_stabiliser_keeps_huge_input_gates_finite():
    backbone = randomised("mlstm", seed=3, scale=0.3)
    with torch.no_grad():
        for mixer in backbone.mixers:
            # exp(800) is beyond float64's range: only the stabiliser keeps the memory finite.
            mixer.gates.bias[: mixer.num_heads] += 800.0
    x = torch.randn(2, 20, INPUT_DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    reset = torch.zeros(2, 20, dtype=torch.bool)
    reset[0, 10] = True
    y, _ = backbone(x, backbone.initial_state(2), reset)
    y_steps, _ = run_steps(backbone, x, backbone.initial_state(2), reset)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_steps, rtol=1e-9, atol=1e-9)


def test_episode_masks_and_decays_stop_at_resets():
    reset = torch.tensor([[False, False, True, False, True]])
    reaches, carries = episode_masks(reset)
    assert carries.tolist() == [[True, True, False, False, False]]
    assert reaches[0, 3].tolist() == [False, False, True, True, False]
    assert reaches[0, 1].tolist() == [True, True, False, False, False]
    log_decay = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]])[..., None]
    # Sums over the episode up to each step, without the reset step's own decay.
    assert episode_log_decay(log_decay, reset, reaches)[0, :, 0].tolist() == [1.0, 3.0, 0.0, 8.0, 0.0]

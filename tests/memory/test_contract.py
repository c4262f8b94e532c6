"""The backbone contract, checked numerically for every registered backbone."""

from __future__ import annotations

import io

import cloudpickle
import pytest
import torch

from memory import BACKBONES, make_backbone

INPUT_DIM, HIDDEN_DIM = 6, 16
NAMES = sorted(BACKBONES)
VARIANTS = {"shm-bounded": ("shm", {"memory_bound": 0.2, "input_shortcut": True})}
"""Options that change how a backbone computes (shm's clamp runs its steps one by one): held to the contract too."""
CASES = NAMES + sorted(VARIANTS)


def build(case: str, seed: int = 0):
    name, options = VARIANTS.get(case, (case, {}))
    torch.manual_seed(seed)
    backbone = make_backbone(name, INPUT_DIM, HIDDEN_DIM, **options).double()
    return backbone


def random_batch(batch_size: int, length: int, reset_probability: float = 0.2, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, length, INPUT_DIM, generator=generator, dtype=torch.float64)
    reset = torch.rand(batch_size, length, generator=generator) < reset_probability
    return x, reset


def perturbed_state(backbone, batch_size: int, seed: int = 2):
    """A non-trivial carried state: the initial state after a few random steps."""
    x, _ = random_batch(batch_size, 5, seed=seed)
    state = backbone.initial_state(batch_size)
    _, state = backbone(x, state, torch.zeros(batch_size, 5, dtype=torch.bool))
    return {key: value.detach() for key, value in state.items()}


def to_state_dtype(state):
    return {key: value.clone() for key, value in state.items()}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("length", [1, 63, 100])
def test_forward_equals_repeated_step(name, length):
    backbone = build(name)
    batch_size = 3
    x, reset = random_batch(batch_size, length)
    state = perturbed_state(backbone, batch_size)
    with torch.no_grad():
        y_sequence, final_sequence = backbone(x, to_state_dtype(state), reset)
        step_state = to_state_dtype(state)
        outputs = []
        for t in range(length):
            y_t, step_state = backbone.step(x[:, t], step_state, reset[:, t])
            outputs.append(y_t)
        y_steps = torch.stack(outputs, dim=1)
    assert y_sequence.shape == (batch_size, length, HIDDEN_DIM)
    torch.testing.assert_close(y_sequence, y_steps, rtol=1e-7, atol=1e-7)
    assert set(final_sequence) == set(step_state)
    for key in final_sequence:
        torch.testing.assert_close(final_sequence[key], step_state[key], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", CASES)
def test_reset_forgets_everything_before_it(name):
    backbone = build(name)
    batch_size, length, reset_at = 2, 24, 11
    x, _ = random_batch(batch_size, length)
    reset = torch.zeros(batch_size, length, dtype=torch.bool)
    reset[:, reset_at] = True
    changed_x = x.clone()
    changed_x[:, :reset_at] = torch.randn_like(changed_x[:, :reset_at]) * 3
    with torch.no_grad():
        y, final = backbone(x, perturbed_state(backbone, batch_size, seed=3), reset)
        y_changed, final_changed = backbone(changed_x, perturbed_state(backbone, batch_size, seed=4), reset)
        y_fresh, final_fresh = backbone(
            x[:, reset_at:], backbone.initial_state(batch_size), reset[:, reset_at:]
        )
    assert not torch.allclose(y[:, :reset_at], y_changed[:, :reset_at]), "the perturbation must matter before the reset"
    torch.testing.assert_close(y[:, reset_at:], y_changed[:, reset_at:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y[:, reset_at:], y_fresh, rtol=1e-7, atol=1e-7)
    for key in final:
        torch.testing.assert_close(final[key], final_fresh[key], rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(final[key], final_changed[key], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_no_gradient_crosses_a_reset(name):
    backbone = build(name)
    batch_size, length, reset_at = 2, 20, 9
    x, _ = random_batch(batch_size, length)
    x.requires_grad_(True)
    reset = torch.zeros(batch_size, length, dtype=torch.bool)
    reset[:, reset_at] = True
    state = {key: value.requires_grad_(value.is_floating_point() or value.is_complex())
             for key, value in perturbed_state(backbone, batch_size).items()}
    y, _ = backbone(x, state, reset)
    y[:, reset_at:].square().sum().backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[:, :reset_at]) == 0
    # Magnitude, not count_nonzero: rounding noise is non-zero too.
    assert x.grad[:, reset_at:].abs().max() > 1e-6
    for key, value in state.items():
        if value.requires_grad:
            assert value.grad is None or torch.count_nonzero(value.grad) == 0, key


@pytest.mark.parametrize("name", CASES)
def test_gradient_flows_without_reset(name):
    backbone = build(name)
    x, _ = random_batch(2, 12)
    x.requires_grad_(True)
    y, _ = backbone(x, backbone.initial_state(2), torch.zeros(2, 12, dtype=torch.bool))
    # A random projection, not a plain sum: the sum of a LayerNorm output is constant, so its
    # gradient would be zero up to rounding and the check would depend on floating-point noise.
    projection = torch.randn(HIDDEN_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (y[:, -1] @ projection).sum().backward()
    first_step_gradient = x.grad[:, 0].abs().max().item()
    if name == "none":
        assert first_step_gradient == 0.0, "the memoryless baseline's last output must not depend on its first input"
    else:
        assert first_step_gradient > 1e-8, "a memory backbone's last output must depend on its first input"


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("batch_size", [1, 4])
def test_state_is_batch_first_fixed_size_and_picklable(name, batch_size):
    backbone = build(name)
    initial = backbone.initial_state(batch_size)
    shapes = []
    for length in (1, 7, 40):
        x, reset = random_batch(batch_size, length)
        with torch.no_grad():
            y, state = backbone(x, backbone.initial_state(batch_size), reset)
        assert y.shape == (batch_size, length, HIDDEN_DIM)
        shapes.append({key: (tuple(value.shape), value.dtype) for key, value in state.items()})
        for key, value in state.items():
            assert value.shape[0] == batch_size, key
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0] == {key: (tuple(value.shape), value.dtype) for key, value in initial.items()}
    buffer = io.BytesIO(cloudpickle.dumps(state))
    restored = cloudpickle.loads(buffer.getvalue())
    for key in state:
        torch.testing.assert_close(restored[key], state[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_module_survives_a_pickle_round_trip(name):
    backbone = build(name)
    restored = cloudpickle.loads(cloudpickle.dumps(backbone))
    x, reset = random_batch(2, 9)
    with torch.no_grad():
        y, _ = backbone(x, backbone.initial_state(2), reset)
        y_restored, _ = restored(x, restored.initial_state(2), reset)
    torch.testing.assert_close(y, y_restored, rtol=0, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_bad_inputs_raise_clear_errors(name):
    backbone = build(name)
    x, reset = random_batch(2, 5)
    state = backbone.initial_state(2)
    with pytest.raises(ValueError, match=r"x must be \[B, T, D\] with D = 6"):
        backbone(x[..., :4], state, reset)
    with pytest.raises(ValueError, match=r"x must be \[B, D\]"):
        backbone.step(x, state, reset[:, 0])
    with pytest.raises(ValueError, match="reset must be a bool tensor"):
        backbone(x, state, reset.float())
    with pytest.raises(ValueError, match="reset must be a bool tensor"):
        backbone(x, state, reset[:, :3])
    with pytest.raises(ValueError, match="state must be a dict with keys"):
        backbone(x, {"nonsense": torch.zeros(2)}, reset)
    wrong_batch = backbone.initial_state(3)
    if wrong_batch:
        with pytest.raises(ValueError, match=r"state\[.*\] must be"):
            backbone(x, wrong_batch, reset)
    with pytest.raises(ValueError, match="must be a floating-point tensor"):
        backbone(x.long(), state, reset)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'lsmt'; choose one of: .*gru.*lstm.*s5"):
        make_backbone("lsmt", INPUT_DIM, HIDDEN_DIM)


def test_registry_has_every_backbone():
    assert set(BACKBONES) >= {"none", "lstm", "gru", "s4", "s5", "mamba", "transformer", "memory_tokens",
                              "ffm", "shm", "gtrxl", "lru", "mingru", "mamba2", "gated_deltanet", "mlstm"}

"""Chunk-wise parallel forms of matrix-state recurrences with episode resets (Mamba-2, mLSTM, Gated DeltaNet).

The sequence is cut into chunks of `chunk_size` steps. Inside a chunk the outputs are matmuls
over a [C, C] decay matrix (the "attention" form); across chunks the matrix state is carried,
so the work is O(T C) and the state between chunks is exactly the recurrent one. A reset at
step t drops the state carried into t: inside a chunk that is a mask (step j reaches step i
only when no reset lies in (j, i]), and the state carried into the chunk reaches only the
steps before the chunk's first reset. Decays are in log space; masked entries are -inf
before the exponential, so no overflowing term is ever formed (and no NaN gradient).
"""

from __future__ import annotations

import torch


def chunk_slices(length: int, chunk_size: int) -> list[slice]:
    """[0, C), [C, 2C), ... covering `length` steps."""
    return [slice(start, min(start + chunk_size, length)) for start in range(0, length, chunk_size)]


def episode_masks(reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """reset bool [B, C] -> (reaches bool [B, C, C]: j <= i with no reset in (j, i],
    carries bool [B, C]: no reset in [0, i], so the state carried into the chunk reaches step i)."""
    episode = reset.cumsum(dim=1)
    length = reset.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=reset.device).tril()
    return causal & (episode[:, :, None] == episode[:, None, :]), episode == 0


def episode_log_decay(log_decay: torch.Tensor, reset: torch.Tensor, reaches: torch.Tensor) -> torch.Tensor:
    """Sum of log_decay [B, C, H] over the steps of each step's episode up to it, from the chunk start or
    after its reset step (whose decay multiplies a dropped state) -> [B, C, H].

    A masked sum rather than a cumsum minus its value at the reset: the difference would be right in
    value but would pass rounding-noise gradients to the decays before the reset.
    """
    counted = reaches & ~reset[:, None, :]
    return torch.einsum("bij,bjh->bih", counted.to(log_decay.dtype), log_decay)


def masked_exp(exponent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(exponent) where mask, exactly 0 elsewhere (the exponent there may be +inf or huge)."""
    return torch.exp(torch.where(mask, exponent, torch.full_like(exponent, float("-inf"))))


def decayed_attention_chunk(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    log_decay: torch.Tensor,
    reset: torch.Tensor,
    state: torch.Tensor,
    log_input_gain: torch.Tensor | None = None,
    row_log_scale: torch.Tensor | None = None,
    state_log_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of S_t = exp(l_t) S_{t-1} + exp(g_t) v_t k_t^T (S dropped where reset_t), o_t = S_t q_t.

    query, key [B, C, H, N], value [B, C, H, P], log_decay l [B, C, H], reset [B, C], state [B, H, P, N].
    Optional, for stabilised recurrences (mLSTM): log_input_gain g [B, C, H]; row_log_scale a [B, C, H]
    (output row t and the final state are multiplied by exp(a_t)); state_log_scale s [B, H] (the true
    carried state is exp(s) * state). Returns (o [B, C, H, P], final state [B, H, P, N]).
    """
    reaches, carries = episode_masks(reset)
    cumulative = episode_log_decay(log_decay, reset, reaches).transpose(1, 2)  # [B, H, C]
    exponent = cumulative[..., :, None] - cumulative[..., None, :]  # [B, H, i, j]
    carry_exponent = cumulative
    if log_input_gain is not None:
        exponent = exponent + log_input_gain.transpose(1, 2)[..., None, :]
    if row_log_scale is not None:
        exponent = exponent + row_log_scale.transpose(1, 2)[..., :, None]
        carry_exponent = carry_exponent + row_log_scale.transpose(1, 2)
    if state_log_scale is not None:
        carry_exponent = carry_exponent + state_log_scale[..., None]
    weights = masked_exp(exponent, reaches[:, None])  # [B, H, C, C]
    carry = masked_exp(carry_exponent, carries[:, None])  # [B, H, C]
    query_h, key_h, value_h = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, C, .]
    scores = (query_h @ key_h.transpose(-1, -2)) * weights
    output = scores @ value_h + carry[..., None] * (query_h @ state.transpose(-1, -2))
    final = (weights[..., -1, :, None] * value_h).transpose(-1, -2) @ key_h + carry[..., -1, None, None] * state
    return output.transpose(1, 2), final

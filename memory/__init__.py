"""Memory backbones behind one contract (see `memory.base`).

    backbone = make_backbone("s5", input_dim=64, hidden_dim=128)
    state = backbone.initial_state(batch_size=16)
    y, state = backbone(x, state, reset)        # x [B, T, 64], reset bool [B, T]
    y, state = backbone.step(x_t, state, reset_t)

`BACKBONES` maps each name to "module:Class"; a backbone module is imported only when it is
first built. `register_backbone` adds your own (a class or a "module:Class" string).
"""

from __future__ import annotations

import importlib

from memory.base import Backbone, State

BACKBONES: dict[str, str | type[Backbone]] = {
    "none": "memory.none:NoMemory",
    "lstm": "memory.lstm:LSTMBackbone",
    "gru": "memory.gru:GRUBackbone",
    "s4": "memory.s4:S4Backbone",
    "s5": "memory.s5:S5Backbone",
    "mamba": "memory.mamba:MambaBackbone",
    "transformer": "memory.transformer:TransformerBackbone",
    "memory_tokens": "memory.memory_tokens:MemoryTokensBackbone",
    "ffm": "memory.ffm:FFMBackbone",
    "shm": "memory.shm:SHMBackbone",
    "gtrxl": "memory.gtrxl:GTrXLBackbone",
    "lru": "memory.lru:LRUBackbone",
    "mingru": "memory.mingru:MinGRUBackbone",
    "mamba2": "memory.mamba2:Mamba2Backbone",
    "gated_deltanet": "memory.gated_deltanet:GatedDeltaNetBackbone",
    "mlstm": "memory.mlstm:MLSTMBackbone",
}


def register_backbone(name: str, backbone: str | type[Backbone]) -> None:
    """Make `name` buildable by `make_backbone` (a Backbone subclass or "module:Class")."""
    BACKBONES[name] = backbone


def backbone_class(name: str) -> type[Backbone]:
    """The class registered under `name`; unknown names raise with the valid ones listed."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    entry = BACKBONES[name]
    if isinstance(entry, str):
        module_name, class_name = entry.split(":")
        entry = getattr(importlib.import_module(module_name), class_name)
    return entry


def make_backbone(name: str, input_dim: int, hidden_dim: int = 128, **options) -> Backbone:
    """Build backbone `name` mapping [.., input_dim] to [.., hidden_dim]; options go to its class."""
    return backbone_class(name)(input_dim=input_dim, hidden_dim=hidden_dim, **options)


__all__ = ["BACKBONES", "Backbone", "State", "backbone_class", "make_backbone", "register_backbone"]

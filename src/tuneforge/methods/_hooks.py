"""What the methods that live in forward hooks share (prompt tuning, prefix tuning, ReFT).

Their adapters change activations or inputs, not weights, so instead of wrapping layers they hook the backbone
(`model.base_model`, which the SFT task calls directly) and keep their switching state (active adapters,
disabled ones, per-row adapters of a mixed batch) in a plain object on the backbone: never a module, so it
stays out of state dicts. Their hooks each assume they see the forward's own inputs, so two hooked methods of
different families cannot share one model.
"""
from __future__ import annotations

import inspect
from typing import ClassVar

from torch import nn

from ..errors import ConfigError
from .base import BASE_ROW, Method

STATE_ATTRS = ("_tuneforge_virtual", "_tuneforge_reft")


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer without its head."""
    return getattr(model, "base_model", model)


def text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def bind_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Positional arguments of a forward call turned into keywords (BERT heads call `self.bert(input_ids, ...)`)."""
    if not args:
        return dict(kwargs)
    names = [n for n, p in inspect.signature(module.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    out = dict(zip(names, args))
    out.update(kwargs)
    return out


class HookState:
    """Switching state of one hooked family on one backbone."""

    def __init__(self):
        self.active: list[str] = []
        self.disabled: set[str] = set()
        self.rows: list | None = None
        self.handles: list = []

    def row_adapters(self, present, batch_size: int) -> list[list[str]]:
        """The adapters that apply to each row: the enabled active ones, or one per row in a mixed batch."""
        usable = [n for n in present if n not in self.disabled]
        if self.rows is None:
            return [[n for n in self.active if n in usable]] * batch_size
        if len(self.rows) != batch_size:
            raise ValueError(f"mixed batch names {len(self.rows)} adapters for a batch of {batch_size} rows")
        return [[r] if r not in (None, BASE_ROW) and r in usable else [] for r in self.rows]


class HookedMethod(Method):
    state_attr: ClassVar[str] = ""
    state_class: ClassVar[type[HookState]] = HookState

    def state(self, model: nn.Module) -> HookState | None:
        return getattr(backbone_of(model), self.state_attr, None)

    def new_state(self, model: nn.Module) -> HookState:
        backbone = backbone_of(model)
        for attr in STATE_ATTRS:
            if attr != self.state_attr and hasattr(backbone, attr):
                raise ConfigError(f"this model already carries adapters of another hooked method family; {self.name} "
                                  "cannot share a model with them (delete those adapters first)", key="method")
        state = self.state_class()
        object.__setattr__(backbone, self.state_attr, state)
        return state

    def forget(self, model: nn.Module, adapter_name: str) -> None:
        """Drop a deleted adapter from the switching state."""
        state = self.state(model)
        state.active = [a for a in state.active if a != adapter_name]
        state.disabled.discard(adapter_name)

    def drop_state(self, model: nn.Module) -> None:
        for handle in self.state(model).handles:
            handle.remove()
        object.__delattr__(backbone_of(model), self.state_attr)

    def set_active(self, model, names) -> None:
        if self.state(model) is not None:
            self.state(model).active = list(names)

    def set_enabled(self, model, adapter_name, enabled) -> None:
        state = self.state(model)
        (state.disabled.discard if enabled else state.disabled.add)(adapter_name)

    def set_row_adapters(self, model, rows) -> None:
        if self.state(model) is not None:
            self.state(model).rows = rows

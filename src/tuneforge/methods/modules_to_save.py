"""Whole modules trained in full next to an adapter (a new classification head), as peft's modules_to_save.

The original module stays untouched; each adapter gets its own trainable copy, so adapters still switch.
File keys are the module's own keys under its path (`base_model.model.classifier.weight`), as peft writes them.
"""
from __future__ import annotations

import copy

from torch import nn

from .base import BASE_ROW


class ModulesToSave(nn.Module):
    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.disabled = False
        self.row_adapters = None
        original.requires_grad_(False)

    def add(self, adapter_name: str) -> None:
        copy_ = copy.deepcopy(self.original_module)
        copy_.requires_grad_(True)
        self.modules_to_save[adapter_name] = copy_
        if adapter_name not in self.active_adapters:
            self.active_adapters.append(adapter_name)

    def has_adapter(self, name: str) -> bool:
        return name in self.modules_to_save

    def forward(self, x, *args, **kwargs):
        if self.row_adapters is not None and not self.disabled:
            out = self.original_module(x, *args, **kwargs).clone()
            for name in dict.fromkeys(self.row_adapters):
                if name in (None, BASE_ROW) or name not in self.modules_to_save:
                    continue
                idx = [i for i, r in enumerate(self.row_adapters) if r == name]
                out[idx] = self.modules_to_save[name](x[idx], *args, **kwargs)
            return out
        active = [a for a in self.active_adapters if a in self.modules_to_save]
        if self.disabled or not active:
            return self.original_module(x, *args, **kwargs)
        return self.modules_to_save[active[-1]](x, *args, **kwargs)

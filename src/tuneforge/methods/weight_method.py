"""The shared half of every method that wraps layers: targeting, injection, per-name state, merge, removal.

A weight method declares `layer_types`, a first-match dispatch chain from base-layer kind to adapter-layer
class, and inherits the rest. Its file then only defines the config, the layer classes and the maths.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, TargetNotFound
from ..models.state_copy import copy_checked
from .base import AdapterLayer, Method, MethodConfig
from .target_spec import targeting
from .targeting import adapter_modules, base_of, replace_module, select_modules

PEFT_PREFIX = "base_model.model."


class WeightMethod(Method):
    # (base-layer type, adapter-layer class): first match wins, as in peft's dispatch chain.
    layer_types: ClassVar[tuple[tuple[type, type[AdapterLayer]], ...]] = ()

    def dispatch(self, base: nn.Module) -> type[AdapterLayer]:
        for base_type, layer_cls in self.layer_types:
            if isinstance(base, base_type):
                return layer_cls
        kinds = ", ".join(t.__name__ for t, _ in self.layer_types)
        raise TargetNotFound(f"{self.name} cannot adapt a {type(base).__name__}; it adapts: {kinds}")

    def supported_types(self) -> tuple[type, ...]:
        return tuple(t for t, _ in self.layer_types)

    def select_targets(self, model: nn.Module, cfg: MethodConfig) -> list[str]:
        return select_modules(
            model,
            supported=self.supported_types(),
            method=self.name,
            **targeting(cfg),
        )

    def apply(self, model: nn.Module, cfg: MethodConfig, adapter_name: str) -> None:
        for name in self.select_targets(model, cfg):
            module = model.get_submodule(name)
            if isinstance(module, AdapterLayer):
                wanted = self.dispatch(base_of(module))
                if type(module) is not wanted:
                    raise ConfigError(
                        f"module {name} already carries a {type(module).__name__}; a {self.name} adapter cannot "
                        f"be stacked on it (delete or merge the other adapter first)",
                        key="method",
                    )
                module.update_layer(adapter_name, cfg, module_name=name)
            else:
                layer = self.dispatch(module)(module)
                layer.update_layer(adapter_name, cfg, module_name=name)
                replace_module(model, name, layer)

    def layers(self, model: nn.Module, adapter_name: str | None = None) -> list[tuple[str, AdapterLayer]]:
        classes = tuple(cls for _, cls in self.layer_types)
        return [
            (n, m)
            for n, m in adapter_modules(model)
            if isinstance(m, classes) and (adapter_name is None or m.has_adapter(adapter_name))
        ]

    def extra_trainable(self, model: nn.Module, cfg: MethodConfig, adapter_name: str):
        """Parameters outside the adapter layers that this method trains (biases for bias='all', ...)."""
        return []

    def trainable_parameters(self, model, adapter_name, cfg=None):
        out = []
        for mname, layer in self.layers(model, adapter_name):
            out.extend((f"{mname}.{rel}", p) for rel, p in layer.adapter_parameters(adapter_name) if layer.trains(rel))
        if cfg is not None:
            out.extend(self.extra_trainable(model, cfg, adapter_name))
        return out

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        state = {}
        for mname, layer in self.layers(model, adapter_name):
            for rel, p in layer.adapter_parameters(adapter_name):
                if layer.saves(rel):
                    state[PEFT_PREFIX + f"{mname}.{rel}"] = p.detach()
        if cfg is not None:
            for name, p in self.extra_trainable(model, cfg, adapter_name):
                state[PEFT_PREFIX + name] = p.detach()
        return state

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        expected: dict[str, nn.Parameter] = {}
        for mname, layer in self.layers(model, adapter_name):
            for rel, p in layer.adapter_parameters(adapter_name):
                expected[PEFT_PREFIX + f"{mname}.{rel}"] = p
            # peft also stores the whole base weight of targeted embeddings (save_embedding_layers)
            for pn, p in layer.base_layer.named_parameters():
                expected.setdefault(PEFT_PREFIX + f"{mname}.base_layer.{pn}", p)
        if cfg is not None:
            expected.update({PEFT_PREFIX + n: p for n, p in self.extra_trainable(model, cfg, adapter_name)})
        from ..errors import AdapterMismatch

        unknown = [k for k in state if k not in expected]
        if unknown:
            raise AdapterMismatch(
                f"the adapter holds {len(unknown)} tensor(s) this model has no place for, e.g. {unknown[0]!r}: "
                "was it saved for another base model?"
            )
        for key, tensor in state.items():
            copy_checked(expected[key], tensor, key)
        for _, layer in self.layers(model, adapter_name):
            layer.after_load(adapter_name)

    def merge(self, model, adapter_name) -> None:
        for _, layer in self.layers(model, adapter_name):
            layer.merge_adapter(adapter_name)

    def unmerge(self, model, adapter_name) -> None:
        for _, layer in self.layers(model, adapter_name):
            layer.unmerge_adapter(adapter_name)

    def remove(self, model, adapter_name, keep_merged: bool = False) -> None:
        for mname, layer in self.layers(model, adapter_name):
            layer.delete_adapter(adapter_name, keep_merged=keep_merged)
            if not layer.adapter_names():
                replace_module(model, mname, layer.base_layer)

    def set_enabled(self, model, adapter_name, enabled) -> None:
        for _, layer in self.layers(model, adapter_name):
            layer.disabled = not enabled

    def set_row_adapters(self, model, rows) -> None:
        for _, layer in self.layers(model):
            layer.row_adapters = rows

    def set_active(self, model, names: list[str]) -> None:
        for _, layer in self.layers(model):
            layer.active_adapters = [n for n in names if layer.has_adapter(n)]

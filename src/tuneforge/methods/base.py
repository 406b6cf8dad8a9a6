"""The method contract and the one adapter-layer base that weight methods share.

A method is a config dataclass plus a `Method` subclass registered by name. Weight methods (LoRA and its
family, IA3, ...) wrap a frozen base layer in an `AdapterLayer` that keeps each adapter's parameters in
per-name dicts (as peft does), which is what makes switching, disabling and mixed batches possible. The
layer implements `forward` once; a method writes how to add its parameters, how it changes the output, and its
weight delta when it is mergeable.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, NotMergeable
from ..registry import METHODS
from .target_spec import SavedModules

BASE_ROW = "__base__"  # a mixed-batch row that uses no adapter (peft's spelling)


@dataclasses.dataclass
class MethodConfig:
    """Base of every method's config. Fields are JSON-safe data only; names follow peft where the idea is
    the same so adapter_config.json files read the same in both tools."""

    method: ClassVar[str] = ""

    def validate(self) -> None:
        """Raise ConfigError(key=...) for a bad value. Subclasses extend."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "MethodConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def can_save_modules(cls) -> bool:
        """Whether the method takes `modules_to_save` (whole modules trained and saved beside the adapter)."""
        return issubclass(cls, SavedModules)

    def saved_modules(self) -> list[str]:
        """Its `modules_to_save` names ([] when unset, or when the method has no such key)."""
        return list(self.modules_to_save or []) if self.can_save_modules() else []


def adapter_dtype(base_weight: torch.Tensor) -> torch.dtype:
    """The dtype an adapter's own parameters take on a layer with this weight: fp32, or fp64 on an fp64 base.
    Never a half precision: bf16 keeps 8 bits, so an AdamW step of 1e-3 on an IA3 scale of 1.0 (bf16 spacing
    there: 2^-7) or on a LoRA factor rounds to nothing. Quantised (integer) bases get fp32 too. peft does the
    same (autocast_adapter_dtype); each layer casts its input up and its output back to the activations' dtype.
    A 4-bit base dequantised into float64 (numerical checks, quant/layers.py) counts as an fp64 base."""
    state = getattr(base_weight, "quant_state", None)
    dtype = state.dtype if state is not None else base_weight.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(cond: bool, key: str, message: str) -> None:
    """Tiny helper for validate(): raise a ConfigError naming the key when cond is false."""
    if not cond:
        raise ConfigError(message, key=key)


class Method:
    """Class facts plus the operations the rest of the package calls. Subclasses set the facts and implement
    apply / state_dict / load_state_dict; weight methods get most of it from `WeightMethod`."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "weight"  # weight | input | representation | full
    mergeable: ClassVar[bool] = False
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    paper: ClassVar[str] = ""
    formula: ClassVar[str] = ""  # trainable-parameter formula shown by `tuneforge methods`
    peft_type: ClassVar[str | None] = None  # peft's name for the same method, if peft has it
    shares_base: ClassVar[bool] = True  # False when an adapter changes the base's own tensors (no multi-adapter serving)
    fitted: ClassVar[bool] = False  # fitted on the frozen model's features outside the loop (`fit` / `predict`)
    combine_as: ClassVar[str] = ""  # how `combine` takes its adapters: "factors" (output exactly W x + s B A x,
    # any how), "svd" (only how="svd"), "" (not at all)
    combines_as_lora: ClassVar[bool] = False  # `tuneforge combine` loads its file on a scratch base and takes
    # `as_plain_lora` of it (the adapter owns part of the base weight)
    init_reads_base: ClassVar[bool] = True  # its initial values depend on the base's values (DoRA's magnitude,
    # PiSSA's SVD): a base sharded over processes is then loaded whole first; False: each process may read only its
    # shard, after the adapter is made on placeholders of the right shapes (models/loader_deferred.py)

    def select_targets(self, model: nn.Module, cfg: MethodConfig) -> list[str]:
        return []

    def apply(self, model: nn.Module, cfg: MethodConfig, adapter_name: str) -> None:
        raise NotImplementedError

    def trainable_parameters(self, model: nn.Module, adapter_name: str) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def state_dict(self, model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str) -> None:
        raise NotImplementedError

    def merge(self, model: nn.Module, adapter_name: str) -> None:
        raise NotMergeable(f"{self.name} changes activations, not weights, so it cannot be merged")

    def unmerge(self, model: nn.Module, adapter_name: str) -> None:
        raise NotMergeable(f"{self.name} cannot be merged, so it cannot be unmerged")

    def remove(self, model: nn.Module, adapter_name: str, keep_merged: bool = False) -> None:
        """Take the adapter out; keep_merged leaves an already merged delta in the base weights (unload)."""
        raise NotImplementedError

    def set_enabled(self, model: nn.Module, adapter_name: str, enabled: bool) -> None:
        """Disable/enable without removing (used by `disable_adapters`)."""

    def set_row_adapters(self, model: nn.Module, rows: list[str] | None) -> None:
        """Per-row adapter names for a mixed batch (None ends it)."""

    def optimizer_groups(self, model, cfg, adapter_name, params, lr, weight_decay) -> list[dict] | None:
        """Optional: split this adapter's parameters into AdamW groups (LoRA+). None = default grouping."""
        return None

    @contextmanager
    def batch_context(self, model: nn.Module, cfg: MethodConfig, adapter_name: str, batch: dict):
        """Optional per-batch state (ReFT positions); the loop wraps every forward in it."""
        yield

    def on_optimizer_step(self, model: nn.Module, cfg: MethodConfig, adapter_name: str) -> None:
        """Optional hook after optimizer.step() (Delta-LoRA updates the frozen weight here)."""

    def set_active(self, model: nn.Module, names: list[str]) -> None:
        """Make `names` the active adapters of this method's layers or state (`set_active_adapters` calls it for
        every method the model holds)."""

    @classmethod
    def claims_peft_config(cls, body: dict[str, Any]) -> bool:
        """Whether an adapter_config.json is this method's whatever its peft_type says (a DoRA file says LORA with
        use_dora); checked before the peft_type match."""
        return False

    def combine_refusal(self, adapter_name: str, how: str) -> str | None:
        """Why `combine(..., how)` cannot take this adapter, or None when it can (see `combine_as`)."""
        if self.combine_as == "factors" or (self.combine_as == "svd" and how == "svd"):
            return None
        if self.combine_as == "svd":
            return f"adapter {adapter_name!r} is {self.name}: only how='svd' combines it"
        family = [n for n, cls in METHODS.items() if cls.combine_as == "factors"]
        svd = "".join(f", and {n} with how='svd'" for n, cls in METHODS.items() if cls.combine_as == "svd")
        return (f"adapter {adapter_name!r} is {self.name}: combine works on LoRA-family adapters "
                f"({', '.join(family)}{svd})")

    def as_plain_lora(self, model: nn.Module, adapter_name: str) -> MethodConfig:
        """Replace the adapter in place by the plain LoRA it equals and return that config (`combines_as_lora`)."""
        raise NotImplementedError(f"{self.name} has no plain-LoRA form")

    def fit(self, model: nn.Module, tokenizer, texts: list[str], labels: list, cache_dir=None,
            cfg: MethodConfig | None = None):
        """A `fitted` method's classifier on the frozen model's features of `texts`."""
        raise NotImplementedError(f"{self.name} trains in the loop; it is not fitted")

    def predict(self, model: nn.Module, tokenizer, texts: list[str], classifier, cache_dir=None) -> list:
        """Labels a `fitted` method's classifier gives `texts`."""
        raise NotImplementedError(f"{self.name} trains in the loop; it is not fitted")

    def fit_images(self, model: nn.Module, batches, labels: list, cfg: MethodConfig | None = None):
        """A `fitted` method's classifier on an image model's features of `batches` (pixel tensors)."""
        raise NotImplementedError(f"{self.name} trains in the loop; it is not fitted")

    def predict_images(self, model: nn.Module, batches, classifier) -> list:
        """Labels a `fitted` method's classifier gives the images of `batches`."""
        raise NotImplementedError(f"{self.name} trains in the loop; it is not fitted")

    def peft_config(self, cfg: MethodConfig) -> dict[str, Any]:
        """The adapter_config.json body (without base model / task fields)."""
        body = cfg.to_dict()
        body["peft_type"] = self.peft_type or self.name.upper()
        return body

    @classmethod
    def config_from_peft(cls, body: dict[str, Any]) -> MethodConfig:
        """Build our config from an adapter_config.json written by us or by peft (unknown keys dropped)."""
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        return cls.config_class(**{k: v for k, v in body.items() if k in names})


class AdapterLayer(nn.Module):
    """A frozen base layer plus any number of named adapters of one method.

    Subclasses list the attributes that hold per-adapter parameters in `adapter_attrs` (ModuleDicts or
    ParameterDicts keyed by adapter name) and implement `update_layer`, `adapter_forward` and, when mergeable,
    `delta_weight`.
    """

    adapter_attrs: ClassVar[tuple[str, ...]] = ()
    per_adapter_values: ClassVar[tuple[str, ...]] = ()  # plain dicts keyed by adapter name (scaling, ...)

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        self.row_adapters: list[str | None] | None = None
        base_layer.requires_grad_(False)

    # ---- what a subclass writes -------------------------------------------------------------------
    def update_layer(self, adapter_name: str, cfg: MethodConfig, module_name: str = "") -> None:
        raise NotImplementedError

    def trains(self, rel_key: str) -> bool:
        """Whether the adapter parameter at this relative key trains (LoRA-FA freezes lora_A)."""
        return True

    def saves(self, rel_key: str) -> bool:
        """Whether it goes into the adapter file (VeRA's seeded projections need not)."""
        return True

    def after_load(self, adapter_name: str) -> None:
        """Recompute anything derived from loaded weights."""

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, adapter_name: str, *args, **kwargs):
        """Return the layer output with this adapter applied on top of `result = base_layer(x)`."""
        raise NotImplementedError

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        raise NotMergeable(f"{type(self).__name__} has no weight delta")

    def mixed_adapters_forward(self, x: torch.Tensor, result: torch.Tensor, rows: list):
        """Optional: every row's own adapter on top of `result` in one go (LoRA: see _mixed_lora.py); None runs
        the per-adapter loop of a mixed batch instead."""
        return None

    # ---- shared machinery ---------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:  # transformers reads .weight of some layers (tied embeddings, dtype)
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    def adapter_names(self) -> list[str]:
        names: list[str] = []
        for attr in self.adapter_attrs:
            for k in getattr(self, attr).keys():
                if k not in names:
                    names.append(k)
        return names

    def has_adapter(self, name: str) -> bool:
        return any(name in getattr(self, attr) for attr in self.adapter_attrs)

    def adapter_parameters(self, adapter_name: str) -> list[tuple[str, nn.Parameter]]:
        """(relative key without the adapter name, parameter): the peft file layout."""
        out = []
        for attr in self.adapter_attrs:
            container = getattr(self, attr)
            if adapter_name not in container:
                continue
            item = container[adapter_name]
            if isinstance(item, nn.Parameter):
                out.append((attr, item))
            else:
                out.extend((f"{attr}.{n}", p) for n, p in item.named_parameters())
        return out

    def delete_adapter(self, adapter_name: str, keep_merged: bool = False) -> None:
        if adapter_name in self.merged_adapters:
            if keep_merged:
                self.merged_adapters.remove(adapter_name)
            else:
                self.unmerge_adapter(adapter_name)
        for attr in self.adapter_attrs:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        for attr in self.per_adapter_values:
            getattr(self, attr).pop(adapter_name, None)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    def merge_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters or not self.has_adapter(adapter_name):
            return
        w = self.base_layer.weight
        if not w.dtype.is_floating_point:  # adding to 4-bit/8-bit codes would round the adapter away, silently
            raise NotMergeable(
                f"the base weights of this {type(self.base_layer).__name__} are quantised ({w.dtype}); dequantise "
                "the model first (tuneforge.quant.dequantize_model, which `tuneforge merge` does), then merge"
            )
        w.data += self.delta_weight(adapter_name).to(w.dtype)
        self.merged_adapters.append(adapter_name)

    def unmerge_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.merged_adapters:
            return
        w = self.base_layer.weight
        w.data -= self.delta_weight(adapter_name).to(w.dtype)
        self.merged_adapters.remove(adapter_name)

    def unmerge_all(self) -> None:
        for name in list(reversed(self.merged_adapters)):
            self.unmerge_adapter(name)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.disabled or self.row_adapters is not None:
            self.unmerge_all()
            if self.disabled:
                return self.base_layer(x, *args, **kwargs)
            return self._mixed_forward(x, *args, **kwargs)
        active = [a for a in self.active_adapters if self.has_adapter(a) and a not in self.merged_adapters]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            result = self.adapter_forward(x, result, name, *args, **kwargs)
        return result

    def _mixed_forward(self, x: torch.Tensor, *args, **kwargs):
        rows = self.row_adapters
        if len(rows) != x.shape[0]:
            raise ValueError(f"mixed batch names {len(rows)} adapters for a batch of {x.shape[0]} rows")
        result = self.base_layer(x, *args, **kwargs)
        batched = self.mixed_adapters_forward(x, result, rows)
        if batched is not None:
            return batched
        out = result.clone()
        for name in dict.fromkeys(rows):
            if name in (None, BASE_ROW) or not self.has_adapter(name):
                continue
            idx = torch.tensor([i for i, r in enumerate(rows) if r == name], device=x.device)
            out[idx] = self.adapter_forward(x[idx], result[idx], name, *args, **kwargs).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names()}, active={self.active_adapters}, merged={self.merged_adapters}"

"""The shared half of the methods that train a subset of the model's own parameters: BitFit, selective, full,
head_only, last_k.

These methods add no layer: the trained tensors *are* model tensors. So that adapters still switch, disable and
delete like layer adapters, every adapter owns a trainable copy of the tensors it trains, and the model's modules
point at the active adapter's copy (a pointer swap, no data copy) or, with adapters disabled (the DPO reference
policy), at the untouched originals. Cost: one extra copy of the trained tensors per adapter.

Adapter files: `adapter_model.safetensors` holds the trained tensors under `base_model.model.<parameter name>`
(tied tensors once, under their first name; adapter wrappers such as `base_layer` are left out of names), and
`adapter_config.json` says `peft_type: <our method name, upper case>` (BITFIT, FULL, ...): peft has no format
for these methods.

Merging: while the adapter is active the model already computes with the trained tensors, so merge and unmerge
change nothing; `unload(merge=True)` leaves the trained tensors in the model for good (then `save_pretrained`,
or `tuneforge.io.merge`, writes a plain transformers checkpoint) and `unload(merge=False)` restores the originals.
A mixed batch cannot give its rows different weights of one layer: it works when all rows use the same one of
these adapters (or none of them) and raises otherwise.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from ..errors import AdapterMismatch, ConfigError
from ..models.state_copy import copy_checked
from .base import AdapterLayer, Method, MethodConfig
from .modules_to_save import ModulesToSave
from .targeting import base_of
from .weight_method import PEFT_PREFIX

_STORE = "_tuneforge_subset"
TASK_HEADS = ("classifier", "score", "qa_outputs")


@dataclasses.dataclass(eq=False)
class Slot:
    """One model tensor that some adapters train: the original, where it sits, each adapter's copy."""

    original: nn.Parameter
    places: list[tuple[nn.Module, str]]
    trained: dict[str, nn.Parameter] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class Store:
    """Kept on the model (a plain attribute): every subset adapter's tensors and which ones are live."""

    slots: dict[str, Slot] = dataclasses.field(default_factory=dict)
    adapters: list[str] = dataclasses.field(default_factory=list)
    active: list[str] = dataclasses.field(default_factory=list)
    disabled: set[str] = dataclasses.field(default_factory=set)
    row_mode: bool = False
    row_adapter: str | None = None


def model_parameters(model: nn.Module) -> dict[str, tuple[nn.Parameter, list[tuple[nn.Module, str]]]]:
    """Name -> (live tensor, places) for the base model's own parameters, in model order. Adapter layers and
    modules_to_save wrappers are seen through (their base), tied tensors appear once under their first name."""
    store = getattr(model, _STORE, None)
    owner = {}
    if store is not None:
        for name, slot in store.slots.items():
            for p in (slot.original, *slot.trained.values()):
                owner[id(p)] = name
    out: dict[str, tuple[nn.Parameter, list]] = {}
    first_name: dict[int, str] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        if isinstance(module, AdapterLayer):
            return walk(module.base_layer, prefix)
        if isinstance(module, ModulesToSave):
            return walk(module.original_module, prefix)
        for attr, p in module._parameters.items():
            if p is None:
                continue
            key = first_name.setdefault(id(p), owner.get(id(p), prefix + attr))
            places = out.setdefault(key, (p, []))[1]
            if not any(m is module and a == attr for m, a in places):
                places.append((module, attr))
        for child_name, child in module._modules.items():
            if child is not None:
                walk(child, f"{prefix}{child_name}.")

    walk(model, "")
    return out


def head_parameter_names(model: nn.Module, params: dict, lm_head: bool = True) -> list[str]:
    """The task head's parameters (classifier / score / qa_outputs); without one, the output embeddings
    (lm_head, which tied models share with the input embeddings) when lm_head is true."""
    task = [n for n in params if n.split(".")[0] in TASK_HEADS]
    if task or not lm_head:
        return task
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is None:
        return []
    ids = {id(p) for p in base_of(head).parameters()}
    return [n for n, (p, _) in params.items() if id(p) in ids]


def norm_statistics(model: nn.Module, trained: list[str]) -> dict[str, torch.Tensor]:
    """Name -> buffer of the running statistics (running_mean, running_var, num_batches_tracked) of every
    BatchNorm whose weight or bias is among the `trained` parameter names. A BatchNorm that trains updates its
    statistics from the training batches, so they are part of what the adapter saves (a frozen one runs in eval
    mode and keeps its checkpoint's statistics; see the image_classify task). They are the model's own buffers,
    not per-adapter copies: switching between two such adapters does not switch the statistics."""
    names = set(trained)
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.track_running_stats:
            continue
        dot = f"{prefix}." if prefix else ""
        if f"{dot}weight" in names or f"{dot}bias" in names:
            for attr in ("running_mean", "running_var", "num_batches_tracked"):
                buffer = getattr(module, attr, None)
                if buffer is not None:
                    out[dot + attr] = buffer
    return out


def name_shapes(names, limit: int = 12) -> str:
    """A short list of the parameter names that exist, block indices folded (for error messages)."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".N.", n) for n in names))
    more = f", ... ({len(folded) - limit} more)" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def _store(model: nn.Module) -> Store | None:
    return getattr(model, _STORE, None)


def _place(slot: Slot, p: nn.Parameter) -> None:
    for module, attr in slot.places:
        current = module._parameters[attr]
        if current is p:
            continue
        if current is not None and (p.device != current.device or p.dtype != current.dtype):
            p.data = p.data.to(device=current.device, dtype=current.dtype)  # the model was moved or cast since
        module._parameters[attr] = p


def _refresh(store: Store) -> None:
    """Point every slot at the tensor the current state asks for."""
    for slot in store.slots.values():
        if store.row_mode:
            name = store.row_adapter if store.row_adapter in slot.trained else None
        else:
            live = [a for a in store.active if a in slot.trained and a not in store.disabled]
            name = live[-1] if live else None
        _place(slot, slot.trained[name] if name else slot.original)


class SubsetMethod(Method):
    """A method that trains some of the model's existing tensors. Subclasses write `select_parameters`."""

    kind = "full"
    mergeable = True

    def select_parameters(self, model: nn.Module, cfg: MethodConfig, params: dict) -> list[str]:
        """Names (keys of `params`, from model_parameters) of the tensors this adapter trains; ConfigError if none."""
        raise NotImplementedError

    def select_targets(self, model: nn.Module, cfg: MethodConfig) -> list[str]:
        return self.select_parameters(model, cfg, model_parameters(model))

    def apply(self, model: nn.Module, cfg: MethodConfig, adapter_name: str) -> None:
        params = model_parameters(model)
        names = self.select_parameters(model, cfg, params)
        store = _store(model)
        if store is None:
            store = Store()
            object.__setattr__(model, _STORE, store)
        for name in names:
            slot = store.slots.get(name)
            if slot is None:
                p, places = params[name]
                slot = store.slots[name] = Slot(p, places)
            slot.trained[adapter_name] = nn.Parameter(slot.original.detach().clone(), requires_grad=False)
        store.adapters.append(adapter_name)

    def trainable_parameters(self, model, adapter_name, cfg=None) -> list[tuple[str, nn.Parameter]]:
        store = _store(model)
        if store is None:
            return []
        return [(n, s.trained[adapter_name]) for n, s in store.slots.items() if adapter_name in s.trained]

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        trained = self.trainable_parameters(model, adapter_name)
        state = {PEFT_PREFIX + n: p.detach() for n, p in trained}
        state.update({PEFT_PREFIX + n: b.detach() for n, b in norm_statistics(model, [n for n, _ in trained]).items()})
        return state

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        trained = self.trainable_parameters(model, adapter_name)
        own = {PEFT_PREFIX + n: p for n, p in trained}
        own.update({PEFT_PREFIX + n: b for n, b in norm_statistics(model, [n for n, _ in trained]).items()})
        unknown = [k for k in state if k not in own]
        missing = [k for k in own if k not in state]
        if unknown or missing:
            what = f"has no place for {unknown[0]!r}" if unknown else f"lacks {missing[0]!r}"
            raise AdapterMismatch(
                f"the {self.name} adapter file {what} ({len(unknown)} unknown, {len(missing)} missing tensors): "
                "was it saved for another base model or with other settings?"
            )
        for key, tensor in state.items():
            copy_checked(own[key], tensor, key, hint="the adapter was saved for another base model or settings")

    def merge(self, model, adapter_name) -> None:
        """Nothing to do: an active adapter's tensors already are the model's tensors."""

    def unmerge(self, model, adapter_name) -> None:
        """Nothing to do: merging changed nothing."""

    def remove(self, model, adapter_name, keep_merged: bool = False) -> None:
        store = _store(model)
        if store is None:
            return
        for name in list(store.slots):
            slot = store.slots[name]
            p = slot.trained.pop(adapter_name, None)
            if p is None:
                continue
            if keep_merged:
                slot.original = p.requires_grad_(False)
            if not slot.trained:
                _place(slot, slot.original)
                del store.slots[name]
        store.adapters = [a for a in store.adapters if a != adapter_name]
        store.active = [a for a in store.active if a != adapter_name]
        store.disabled.discard(adapter_name)
        _refresh(store)
        if not store.adapters:
            object.__delattr__(model, _STORE)

    def set_active(self, model, names: list[str]) -> None:
        store = _store(model)
        if store is not None:
            store.active = list(names)
            _refresh(store)

    def set_enabled(self, model, adapter_name, enabled) -> None:
        store = _store(model)
        if store is not None:
            (store.disabled.discard if enabled else store.disabled.add)(adapter_name)
            _refresh(store)

    def set_row_adapters(self, model, rows) -> None:
        store = _store(model)
        if store is None:
            return
        if rows is None:
            store.row_mode, store.row_adapter = False, None
        else:
            wanted = {r if r in store.adapters else None for r in rows}
            if len(wanted) > 1:
                raise ConfigError(
                    f"a mixed batch cannot combine rows {sorted(map(str, wanted))}: adapters of methods that train "
                    "the model's own tensors (bitfit, selective, full, head_only, last_k) give one weight per layer; "
                    "run these rows as separate batches",
                    key="row_adapters",
                )
            store.row_mode, store.row_adapter = True, wanted.pop()
        _refresh(store)

"""Many adapters on one base model: loaded on demand into the base's adapter layers, evicted least recently
used beyond a RAM budget, and mixed per row in one forward pass.

Why in the layers and not as merged copies: a merged fine-tune is a whole model (540 MB for SmolLM2), an
adapter a few MB. Keeping adapters beside one frozen base lets a batch hold rows for different adapters
(`tuneforge.methods.mixed_batch`, as S-LoRA and punica serve LoRA: https://arxiv.org/abs/2311.03285), and
switching adapters between requests costs nothing but a list of names.

Adapters get internal slot names (`slot7`), so a model id such as `ft:base:x:ftjob-...` never reaches a module
name or a path. The pool is used from one thread (the generation engine's), which also does every load and
eviction, so no forward pass ever sees an adapter appear or vanish.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, TuneforgeError
from ..models.state_copy import copy_checked


ADAPTER_KINDS = ("weight", "input", "representation")  # method kinds that add modules instead of training base ones


class AdapterConflict(TuneforgeError):
    """Two adapters cannot sit in the base model at once (different methods wrapping the same layers)."""


def check_servable(method_name: str) -> None:
    """Raise ConfigError unless adapters of this method can share a base with others in a mixed batch: the method
    must route rows per adapter (set_row_adapters) and must leave the base model's own tensors alone."""
    from ..methods.base import Method
    from ..registry import METHODS

    cls = METHODS.get(method_name)
    if cls.kind not in ADAPTER_KINDS or not cls.shares_base or cls.set_row_adapters is Method.set_row_adapters:
        raise ConfigError(
            f"adapters of method '{method_name}' change the base model's own tensors or cannot be mixed per "
            "request, so they cannot share a served base; merge such a model and serve it as --base",
            key="name")


@dataclass
class CheckpointRef:
    """A training checkpoint served as a model: `path` is output/checkpoints/step-N of a job, `method` the run
    config's method section (the checkpoint holds the trained tensors under their names in the model)."""

    path: Path
    method: dict


@dataclass
class LoadedAdapter:
    slot: str
    source: Path | CheckpointRef
    bytes: int
    load_s: float


class AdapterPool:
    """model id -> adapter loaded into `model`, in least-recently-used order."""

    def __init__(self, model, budget_bytes: int, allow_pickle: bool = False):
        self.model, self.allow_pickle = model, allow_pickle
        self.budget_bytes = int(budget_bytes)
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._next_slot = 0
        self.loads = self.evictions = self.hits = 0

    @property
    def used_bytes(self) -> int:
        return sum(a.bytes for a in self.loaded.values())

    def ensure(self, wanted: dict[str, Path | CheckpointRef]) -> dict[str, str]:
        """Make every wanted adapter (model id -> adapter directory or checkpoint) resident; returns model id ->
        slot name. Adapters not
        wanted now may be evicted to stay within the budget; the wanted ones never are (so one batch may exceed
        the budget by its own adapters). Raises AdapterConflict when they cannot all be resident together."""
        for model_id in wanted:
            if model_id in self.loaded:
                self.loaded.move_to_end(model_id)
                self.hits += 1
        for model_id, source in wanted.items():
            if model_id not in self.loaded:
                self._load(model_id, source, keep=set(wanted))
        self._trim(keep=set(wanted))
        return {model_id: self.loaded[model_id].slot for model_id in wanted}

    def evict(self, model_id: str) -> bool:
        from ..methods import delete_adapter

        entry = self.loaded.pop(model_id, None)
        if entry is None:
            return False
        delete_adapter(self.model, entry.slot)
        self.evictions += 1
        return True

    def stats(self) -> dict:
        return {"loaded": list(self.loaded), "used_bytes": self.used_bytes, "budget_bytes": self.budget_bytes,
                "loads": self.loads, "hits": self.hits, "evictions": self.evictions}

    def _load(self, model_id: str, source: Path | CheckpointRef, keep: set[str]) -> None:
        from ..methods import adapter_state_dict, set_active_adapters

        check_servable(method_of(source))
        load = load_checkpoint if isinstance(source, CheckpointRef) else load_adapter_dir
        slot = f"slot{self._next_slot}"
        self._next_slot += 1
        started = time.perf_counter()
        try:
            load(self.model, source, slot, self.allow_pickle)
        except ConfigError:
            # Another method's layers are in the way: free everything this batch does not need and retry once.
            for other in [m for m in self.loaded if m not in keep]:
                self.evict(other)
            try:
                load(self.model, source, slot, self.allow_pickle)
            except ConfigError as err:
                raise AdapterConflict(f"adapter {model_id!r} cannot be loaded beside {sorted(keep - {model_id})}: "
                                      f"{err.message}") from None
        set_active_adapters(self.model, [])  # outside a mixed batch the model is the plain base
        size = sum(t.numel() * t.element_size() for t in adapter_state_dict(self.model, slot).values())
        self.loaded[model_id] = LoadedAdapter(slot, source, size, time.perf_counter() - started)
        self.loads += 1

    def _trim(self, keep: set[str]) -> None:
        for model_id in list(self.loaded):
            if self.used_bytes <= self.budget_bytes:
                return
            if model_id not in keep:
                self.evict(model_id)


def method_of(source: Path | CheckpointRef) -> str:
    """The registered method of an adapter directory or checkpoint, read from its config."""
    if isinstance(source, CheckpointRef):
        return source.method["name"]
    from ..io.adapter_files import method_for_peft_config, read_adapter_config

    return method_for_peft_config(read_adapter_config(source)).name


def load_adapter_dir(model, path: Path, slot: str, allow_pickle: bool = False) -> None:
    """An adapter directory (ours or peft's) into `slot`."""
    from ..io import load_adapter

    load_adapter(model, path, adapter_name=slot, allow_pickle=allow_pickle)


def load_checkpoint(model, ref: CheckpointRef, slot: str, allow_pickle: bool = False) -> None:
    """A training checkpoint into `slot`: the adapter is built from the run's method section, then its tensors
    are copied from trainable.safetensors, whose names hold the training adapter's name ("default") where the
    slot's name goes (adapters keep their tensors in per-name dicts)."""
    from safetensors.torch import load_file

    from ..errors import AdapterMismatch
    from ..methods import add_adapter, delete_adapter, make_method_config

    fields = dict(ref.method)
    name = fields.pop("name")
    add_adapter(model, make_method_config(name, fields), slot)
    model.requires_grad_(False)
    params = dict(model.named_parameters())
    try:
        for key, tensor in load_file(str(ref.path / "trainable.safetensors")).items():
            mapped = ".".join(slot if part == "default" else part for part in key.split("."))
            if mapped not in params:
                raise AdapterMismatch(f"{ref.path.name}: checkpoint tensor {key!r} has no place in this model")
            copy_checked(params[mapped], tensor, f"{ref.path.name}: {key}", hint="the checkpoint is of another run")
    except BaseException:
        delete_adapter(model, slot)
        raise

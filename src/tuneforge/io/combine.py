"""Combine adapter folders into a new one (`tuneforge combine`): load them onto one base, `methods.combine`, save.

The maths is `tuneforge.methods.combine` (peft's add_weighted_adapter: linear, cat, svd). This file only turns
folders into in-memory adapters and back: every input is checked before the base model is loaded, PiSSA files
become the plain LoRA they equal (on a scratch copy of the base, so several PiSSA files never share one residual),
and the result is written atomically in peft's format, so a bad input leaves no half-written folder behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, TuneforgeError

KINDS = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "sequence-classification", "FEATURE_EXTRACTION": "encoder"}


def combine_adapters(
    adapters: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    how: str = "cat",
    rank: int | None = None,
    base: str | os.PathLike | None = None,
    *,
    force: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """Write to `out` the adapter sum_i weights[i] * adapters[i] (weights default to 1 each); returns `out`.
    base defaults to the base model the adapters record (they must agree). Refuses a non-empty `out` unless force.
    allow_pickle: also read pickle weights (adapter_model.bin, pytorch_model.bin); refused by default."""
    from ..methods import combine
    from ..methods.combine import HOWS
    from .adapter_files import (QUANTIZATION_NAME, adapter_weights_file, read_adapter_config, read_base_quantization,
                                save_adapter)

    adapters = [Path(a) for a in adapters]
    if not adapters:
        raise ConfigError("name at least one adapter folder", key="adapters")
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise ConfigError(f"{len(weights)} weight(s) for {len(adapters)} adapter(s); give one per adapter",
                          key="weights")
    if how not in HOWS:
        raise ConfigError(f"how must be one of {', '.join(HOWS)}, got {how!r}", key="how")
    if rank is not None and (how != "svd" or rank < 1):
        raise ConfigError("rank is the SVD's target rank: a positive integer with how='svd'", key="rank")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TuneforgeError(f"{out} already exists and is not empty; pass --force to replace it")
    bodies = [read_adapter_config(a) for a in adapters]  # a missing or broken folder fails here, before any load
    base = str(base) if base is not None else _recorded_base(adapters, bodies)
    kinds = {KINDS.get(b.get("task_type"), "causal-lm") for b in bodies}
    if len(kinds) != 1:
        raise TuneforgeError(f"the adapters were saved for different model kinds ({sorted(kinds)}); combine adapters "
                             "of one task")
    quantized = {json.dumps(read_base_quantization(a), sort_keys=True) for a in adapters}
    if len(quantized) != 1:
        raise TuneforgeError("the adapters were trained on differently quantised bases (see their "
                             f"{QUANTIZATION_NAME}); combine adapters of one base")
    kind = kinds.pop()
    num_labels = _num_labels(adapters, allow_pickle) if kind == "sequence-classification" else None
    for a in adapters:
        adapter_weights_file(a, allow_pickle)  # a missing weights file or a refused pickle: before the base loads
    model = _base(base, kind, num_labels, allow_pickle)
    names = [f"adapter{i}" for i in range(len(adapters))]
    for name, path, body in zip(names, adapters, bodies):
        _load(model, path, body, name, lambda: _base(base, kind, num_labels, allow_pickle), allow_pickle)
    combine(model, dict(zip(names, weights)), "combined", how=how, rank=rank)
    # the sources were trained against dequant(Q(W)): keep their record, which `tuneforge merge` reads
    return save_adapter(model, out, "combined", base_model_name=base,
                        base_quantization=read_base_quantization(adapters[0]))


def _recorded_base(adapters: list[Path], bodies: list[dict]) -> str:
    recorded = {b.get("base_model_name_or_path") for b in bodies}
    if None in recorded or "" in recorded:
        missing = [str(a) for a, b in zip(adapters, bodies) if not b.get("base_model_name_or_path")]
        raise TuneforgeError(f"{missing[0]}: the adapter does not record its base model; pass --base")
    if len(recorded) != 1:
        raise TuneforgeError(f"the adapters record different base models ({sorted(recorded)}); adapters of "
                             "different bases cannot be combined (pass --base to insist on one)")
    return recorded.pop()


def _num_labels(adapters: list[Path], allow_pickle: bool = False) -> int | None:
    """A classifier's label count, from the head saved with an adapter (modules_to_save)."""
    from .adapter_files import read_adapter_weights

    for a in adapters:
        for key, tensor in read_adapter_weights(a, allow_pickle).items():
            if key.endswith(("classifier.weight", "score.weight", "classifier.out_proj.weight")):
                return int(tensor.shape[0])
    return None


def _base(base: str, kind: str, num_labels: int | None, allow_pickle: bool = False):
    from ..models import load_model

    return load_model(base, kind=kind, num_labels=num_labels, dtype="float32", device="cpu",
                      allow_pickle=allow_pickle)


def _load(model, path: Path, body: dict, name: str, fresh_base, allow_pickle: bool = False) -> None:
    """load_adapter, except that a method whose adapter owns part of the base (PiSSA) is turned into the plain
    LoRA it equals on a scratch base first (Method.combines_as_lora / as_plain_lora)."""
    from ..methods import add_adapter, adapter_state_dict, load_adapter_state_dict
    from .adapter_files import load_adapter, method_for_peft_config

    method = method_for_peft_config(body)
    if not method.combines_as_lora:
        load_adapter(model, path, name, allow_pickle=allow_pickle)
        return
    scratch = fresh_base()
    load_adapter(scratch, path, name, allow_pickle=allow_pickle)
    cfg = method().as_plain_lora(scratch, name)
    state = adapter_state_dict(scratch, name)
    del scratch
    add_adapter(model, cfg, name)
    load_adapter_state_dict(model, state, name)

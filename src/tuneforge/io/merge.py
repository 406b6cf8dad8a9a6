"""Fold an adapter into its base weights and save a plain transformers checkpoint.

The result needs neither tuneforge nor peft: `AutoModelForCausalLM.from_pretrained(out)` loads it and runs at
base-model speed. Only weight methods can merge; others raise NotMergeable (from `tuneforge.methods.unload`).
The directory is written atomically, so an interrupted merge never leaves a half-written model behind.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import TuneforgeError
from ..methods import unload
from ..models import load_model, load_tokenizer
from ..quant import QuantSpec, dequantize_model
from .adapter_files import adapter_weights_file, atomic_dir, load_adapter, read_adapter_config, read_base_quantization
from .model_card import method_facts, read_facts, write_model_card


def merge(
    base: str | os.PathLike | None,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    *,
    kind: str = "causal-lm",
    force: bool = False,
    quantization: dict | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Load `base` (default: the base recorded in the adapter), apply `adapter`, merge, save to `out`.

    An adapter trained on a 4-bit/8-bit base (QLoRA) was trained against dequant(Q(W)), not W: the base is
    quantised again as recorded in the adapter's base_quantization.json (or as `quantization`, QuantSpec fields,
    says), dequantised into new `dtype` weights, and the adapter merged into those. The quantised tensors are
    never written to. Refuses to replace a non-empty `out` unless force=True. Returns the output directory.
    allow_pickle: also read pickle weights (adapter_model.bin, pytorch_model.bin); refused by default."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TuneforgeError(f"{out} already exists and is not empty; pass --force to replace it")
    base = base_of(base, adapter)
    model, method_cfg = _merged(base, adapter, kind=kind, dtype=dtype, quantization=quantization,
                                allow_pickle=allow_pickle)
    try:
        tokenizer = load_tokenizer(base)
    except TuneforgeError as err:  # a bare weights dir: the merged model is still useful without one
        print(f"warning: no tokenizer saved with the merged model ({err})", file=sys.stderr)
        tokenizer = None
    facts = read_facts(adapter) or method_facts(method_cfg, str(base), kind)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_model_card(tmp, "merged", {**facts, "merged_from": str(adapter)}, base_model=str(base))
    return out


def base_of(base, adapter) -> str:
    """`base`, else the base model recorded in the adapter's config."""
    if base is None:
        base = read_adapter_config(adapter).get("base_model_name_or_path")
        if not base:
            raise TuneforgeError(f"{adapter}: the adapter does not record its base model; pass --base")
    return base


def load_merged(base, adapter, *, kind: str = "causal-lm", dtype: str = "float32", quantization: dict | None = None,
                allow_pickle: bool = False):
    """The plain transformers model with `adapter` folded into `base` (the methods API's unload(merge=True)),
    on the CPU. Used by `merge` and by the GGUF export."""
    return _merged(base, adapter, kind=kind, dtype=dtype, quantization=quantization, allow_pickle=allow_pickle)[0]


def _merged(base, adapter, *, kind: str, dtype: str, quantization: dict | None, allow_pickle: bool = False):
    """(merged model, the adapter's method config)."""
    adapter_weights_file(adapter, allow_pickle)  # a refused pickle fails before the base is loaded
    model = _load_base(base, adapter, kind, dtype, quantization, allow_pickle)
    method_cfg = load_adapter(model, adapter, allow_pickle=allow_pickle)
    return unload(model, merge=True), method_cfg


def _load_base(base, adapter, kind: str, dtype: str, quantization: dict | None, allow_pickle: bool = False):
    """The dense base to merge into: the plain weights, or dequant(Q(W)) for an adapter trained on a quantised base."""
    spec = quantization or read_base_quantization(adapter)
    if spec is None:
        return load_model(base, kind=kind, dtype=dtype, device="cpu", allow_pickle=allow_pickle)
    try:
        spec = QuantSpec(**spec)
    except TypeError as err:
        raise TuneforgeError(f"{adapter}: unreadable base quantisation record ({err})") from None
    spec.validate()
    print(f"the adapter was trained on a {spec.quantization} base: merging into its dequantised weights", file=sys.stderr)
    model = load_model(base, kind=kind, dtype=dtype, device="cpu", quantization=spec.quantization,
                       double_quant=spec.double_quant, compute_dtype=spec.compute_dtype,
                       allow_pickle=allow_pickle)
    return dequantize_model(model, next(p.dtype for p in model.parameters() if p.is_floating_point()))

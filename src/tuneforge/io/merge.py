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
    from ..methods import unload
    from ..models import load_tokenizer
    from . import atomic_dir, load_adapter, read_adapter_config

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TuneforgeError(f"{out} already exists and is not empty; pass --force to replace it")
    if base is None:
        base = read_adapter_config(adapter).get("base_model_name_or_path")
        if not base:
            raise TuneforgeError(f"{adapter}: the adapter does not record its base model; pass --base")
    model = _load_base(base, adapter, kind, dtype, quantization, allow_pickle)
    load_adapter(model, adapter, allow_pickle=allow_pickle)
    model = unload(model, merge=True)
    try:
        tokenizer = load_tokenizer(base)
    except TuneforgeError as err:  # a bare weights dir: the merged model is still useful without one
        print(f"warning: no tokenizer saved with the merged model ({err})", file=sys.stderr)
        tokenizer = None
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def _load_base(base, adapter, kind: str, dtype: str, quantization: dict | None, allow_pickle: bool = False):
    """The dense base to merge into: the plain weights, or dequant(Q(W)) for an adapter trained on a quantised base."""
    from ..models import load_model
    from ..quant import QuantSpec, dequantize_model
    from .adapter_files import read_base_quantization

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

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
) -> Path:
    """Load `base` (default: the base recorded in the adapter), apply `adapter`, merge, save to `out`.

    Refuses to replace a non-empty `out` unless force=True. Returns the output directory."""
    from ..methods import unload
    from ..models import load_model, load_tokenizer
    from . import atomic_dir, load_adapter, read_adapter_config

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TuneforgeError(f"{out} already exists and is not empty; pass --force to replace it")
    if base is None:
        base = read_adapter_config(adapter).get("base_model_name_or_path")
        if not base:
            raise TuneforgeError(f"{adapter}: the adapter does not record its base model; pass --base")
    model = load_model(base, kind=kind, dtype=dtype, device="cpu")
    load_adapter(model, adapter)
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

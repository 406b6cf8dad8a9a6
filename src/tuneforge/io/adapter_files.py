"""Adapter files are peft's files: `adapter_config.json` + `adapter_model.safetensors`, the same keys.

So an adapter trained here loads with `PeftModel.from_pretrained`, and one trained with peft loads here.
Writes go to a temporary directory renamed into place, so an interrupted save never clobbers a good one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdapterMismatch, ModelNotFound, TuneforgeError
from ..quant import quantization_of

CONFIG_NAME = "adapter_config.json"
QUANTIZATION_NAME = "base_quantization.json"  # the quantised base an adapter was trained on (QLoRA)
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"


@contextmanager
def atomic_dir(final_path):
    """Yield a fresh temp dir beside final_path; on success it replaces final_path in one rename."""
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def task_type_of(model) -> str:
    cls = type(model).__name__
    if cls.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if cls.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return "FEATURE_EXTRACTION"


def base_name_of(model) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def save_adapter(model, out_dir, adapter_name: str = "default", base_model_name: str | None = None,
                 base_quantization: dict | None = None, card: dict | None = None) -> Path:
    """Write one adapter in peft's layout, with a README.md model card; returns the directory. base_quantization
    records the quantised base the adapter was trained against when `model` itself is dense (an adapter rebuilt
    from such files). card: the training facts for the card (model_card.training_facts); default: the method's."""
    from ..methods import adapter_state_dict, list_adapters, method_for

    adapters = list_adapters(model)
    if adapter_name not in adapters:
        raise TuneforgeError(f"no adapter named {adapter_name!r} on this model; adapters: {sorted(adapters)}")
    cfg = adapters[adapter_name]
    body = method_for(cfg).peft_config(cfg)
    body.update(
        base_model_name_or_path=base_model_name or base_name_of(model),
        task_type=task_type_of(model),
        inference_mode=True,
        revision=None,
    )
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model, adapter_name).items()}
    quantized = quantization_of(model)
    if quantized is not None:
        base_quantization = quantized.to_dict()
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if base_quantization is not None:  # what `tuneforge merge` must rebuild the base as (peft ignores the file)
            (tmp / QUANTIZATION_NAME).write_text(json.dumps(base_quantization, indent=2))
        from .model_card import method_facts, write_model_card

        kind = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "sequence-classification"}.get(body["task_type"], "encoder")
        write_model_card(tmp, "adapter", card or method_facts(cfg, body["base_model_name_or_path"], kind))
    return Path(out_dir)


def read_base_quantization(adapter_dir) -> dict | None:
    """The QuantSpec fields of the base the adapter was trained on, or None for a dense base."""
    path = Path(adapter_dir) / QUANTIZATION_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TuneforgeError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def read_adapter_config(adapter_dir) -> dict:
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelNotFound(f"{adapter_dir}: no {CONFIG_NAME} here; is this an adapter directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterMismatch(f"{path}: not valid JSON ({exc})") from None


def method_for_peft_config(body: dict):
    from ..registry import METHODS

    for _, cls in METHODS.items():
        claims = getattr(cls, "claims_peft_config", None)
        if claims is not None and claims(body):
            return cls
    for _, cls in METHODS.items():
        if cls.peft_type and cls.peft_type == body.get("peft_type"):
            return cls
        if not cls.peft_type and cls.name.upper() == body.get("peft_type"):  # ours only: Method.peft_config
            return cls
    raise AdapterMismatch(f"adapter type {body.get('peft_type')!r} is not a method tuneforge knows")


def read_adapter_weights(adapter_dir) -> dict[str, torch.Tensor]:
    d = Path(adapter_dir)
    if (d / WEIGHTS_NAME).is_file():
        return load_file(str(d / WEIGHTS_NAME))
    if (d / LEGACY_WEIGHTS_NAME).is_file():
        return torch.load(d / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)
    raise ModelNotFound(f"{adapter_dir}: no {WEIGHTS_NAME}")


def load_adapter(model, adapter_dir, adapter_name: str = "default", trainable: bool = False):
    """Add the adapter stored in adapter_dir (ours or peft's) to model; returns its config."""
    from ..methods import add_adapter, delete_adapter, load_adapter_state_dict, mark_trainable

    body = read_adapter_config(adapter_dir)
    cls = method_for_peft_config(body)
    cfg = cls.config_from_peft(body)
    state = read_adapter_weights(adapter_dir)
    try:
        add_adapter(model, cfg, adapter_name)
    except TuneforgeError as exc:
        raise AdapterMismatch(f"{adapter_dir}: {exc} (adapter saved for base {body.get('base_model_name_or_path')!r})") from None
    try:
        load_adapter_state_dict(model, state, adapter_name)
    except AdapterMismatch as exc:
        delete_adapter(model, adapter_name)
        raise AdapterMismatch(
            f"{adapter_dir}: {exc} (saved for base {body.get('base_model_name_or_path')!r}, "
            f"loading into {base_name_of(model)!r})"
        ) from None
    if trainable:
        mark_trainable(model, adapter_name)
    else:
        for _, p in model.named_parameters():
            p.requires_grad_(False)
    return cfg

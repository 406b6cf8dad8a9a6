"""Adapter files are peft's files: `adapter_config.json` + `adapter_model.safetensors`, the same keys.

So an adapter trained here loads with `PeftModel.from_pretrained`, and one trained with peft loads here.
Writes go to a temporary directory renamed into place, so an interrupted save never clobbers a good one.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdapterMismatch, ModelNotFound, PickleRefused, TuneforgeError
from ..quant import quantization_of

CONFIG_NAME = "adapter_config.json"
QUANTIZATION_NAME = "base_quantization.json"  # the quantised base an adapter was trained on (QLoRA)
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"


@contextmanager
def atomic_dir(final_path):
    """Yield a fresh temp dir beside final_path; on success it replaces final_path in one rename. The result has
    the permissions mkdir gives (the user's umask), not mkdtemp's 0700."""
    from .tempdirs import apply_umask, temp_dir

    final = Path(final_path)
    tmp = temp_dir(final.parent, prefix=f".{final.name}.tmp-")
    try:
        yield tmp
        apply_umask(tmp)
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
    """adapter_config.json as a dict; ModelNotFound / AdapterMismatch naming the path for anything else."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        missing = "" if Path(adapter_dir).is_dir() else " (no such directory)"
        raise ModelNotFound(f"{adapter_dir}: no {CONFIG_NAME} here{missing}; is this an adapter directory?")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterMismatch(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterMismatch(f"{path}: cannot be read ({exc})") from None
    if not isinstance(body, dict):
        raise AdapterMismatch(f"{path}: expected a JSON object (peft's adapter config), got {type(body).__name__}")
    return body


def method_for_peft_config(body: dict, where=None):
    from ..registry import METHODS

    if not isinstance(body, dict):
        raise AdapterMismatch(f"{where or 'adapter config'}: expected a JSON object, got {type(body).__name__}")

    for _, cls in METHODS.items():
        if cls.claims_peft_config(body):
            return cls
    for _, cls in METHODS.items():
        if cls.peft_type and cls.peft_type == body.get("peft_type"):
            return cls
        if not cls.peft_type and cls.name.upper() == body.get("peft_type"):  # ours only: Method.peft_config
            return cls
    prefix = f"{where}: " if where is not None else ""
    raise AdapterMismatch(f"{prefix}adapter type {body.get('peft_type')!r} is not a method tuneforge knows")


def adapter_weights_file(adapter_dir, allow_pickle: bool = False) -> Path:
    """The weights file of an adapter directory: adapter_model.safetensors, or adapter_model.bin (a pickle)
    only when allow_pickle; PickleRefused / ModelNotFound naming the path otherwise."""
    d = Path(adapter_dir)
    if (d / WEIGHTS_NAME).is_file():
        return d / WEIGHTS_NAME
    if (d / LEGACY_WEIGHTS_NAME).is_file():
        if not allow_pickle:
            raise PickleRefused(d / LEGACY_WEIGHTS_NAME, alternative=WEIGHTS_NAME)
        return d / LEGACY_WEIGHTS_NAME
    raise ModelNotFound(f"{adapter_dir}: no {WEIGHTS_NAME} (the adapter's weights) here")


def check_adapter_files(adapter_dir, allow_pickle: bool = False) -> dict:
    """Validate an adapter directory without building it: the config is a JSON object of a known method and the
    weights file opens (a truncated or empty safetensors file fails here, with its path). Returns the config."""
    body = read_adapter_config(adapter_dir)
    method_for_peft_config(body, where=Path(adapter_dir) / CONFIG_NAME)
    path = adapter_weights_file(adapter_dir, allow_pickle)
    if path.name == WEIGHTS_NAME:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for broken files
            raise AdapterMismatch(f"{path}: not a readable safetensors file ({exc}); was it truncated?") from None
        if not names:
            raise AdapterMismatch(f"{path}: holds no tensors")
    return body


def write_adapter_files(out_dir, body: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """adapter_config.json + adapter_model.safetensors from plain data, atomically: how a method that puts no
    adapter into the model (a fitted classifier) is saved."""
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(body, indent=2, sort_keys=True))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return Path(out_dir)


def read_adapter_files(adapter_dir) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json body, tensors) of a safetensors adapter folder: what `write_adapter_files` wrote."""
    return read_adapter_config(adapter_dir), read_adapter_weights(adapter_dir)


def read_adapter_weights(adapter_dir, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    path = adapter_weights_file(adapter_dir, allow_pickle)
    try:
        if path.name == WEIGHTS_NAME:
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken file is the user's input: name it, no traceback
        raise AdapterMismatch(f"{path}: cannot be read ({type(exc).__name__}: {exc}); was it truncated?") from None


def read_saved_adapter(adapter_dir, allow_pickle: bool = False):
    """(adapter_config.json as a dict, the method config it describes, the weights) of a saved adapter folder;
    ModelNotFound / AdapterMismatch naming the file for anything missing or malformed."""
    body = read_adapter_config(adapter_dir)
    cls = method_for_peft_config(body, where=Path(adapter_dir) / CONFIG_NAME)
    try:
        cfg = cls.config_from_peft(body)
    except TuneforgeError as exc:
        raise AdapterMismatch(f"{Path(adapter_dir) / CONFIG_NAME}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterMismatch(f"{Path(adapter_dir) / CONFIG_NAME}: not a valid {cls.name} adapter config "
                              f"({type(exc).__name__}: {exc})") from None
    return body, cfg, read_adapter_weights(adapter_dir, allow_pickle)


def load_adapter(model, adapter_dir, adapter_name: str = "default", trainable: bool = False,
                 allow_pickle: bool = False):
    """Add the adapter stored in adapter_dir (ours or peft's) to model; returns its config. A pickle
    (adapter_model.bin) is read only with allow_pickle=True."""
    from ..methods import add_adapter, delete_adapter, load_adapter_state_dict, mark_trainable

    body, cfg, state = read_saved_adapter(adapter_dir, allow_pickle)
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

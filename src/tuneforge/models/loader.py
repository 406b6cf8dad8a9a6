"""Load a base model and its tokenizer from any name tuneforge accepts, on the right device and dtype.

Every loader funnels through `resolve_model` so packaged aliases, local dirs, GGUF files and hub ids behave
the same, and the canonical name (the alias for packaged models) is recorded on the model, which is what an
adapter later writes as its `base_model_name_or_path`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from ..errors import ConfigError, ModelNotFound
from .packaged import ModelSource, aliases_hint, converted_gguf, resolve_model

ModelKind = Literal["causal-lm", "encoder", "sequence-classification"]
MODEL_KINDS = ("causal-lm", "encoder", "sequence-classification")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks cuda if available, then mps, else cpu; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"unknown device {device!r} ({err})", key="device") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype = "float32", device: torch.device | None = None) -> torch.dtype:
    """"auto" means bf16 on a CUDA device that supports it (halves memory, same range as fp32), else fp32:
    bf16 on these CPUs is slower than fp32 and fp16 on CPU loses too much range."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        device = device or resolve_device("auto")
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of auto, {', '.join(DTYPES)}", key="dtype")
    return DTYPES[dtype]


def _local_dir(source: ModelSource) -> str:
    """The directory from_pretrained should read: GGUF files go through the cached conversion."""
    return str(converted_gguf(source.location)) if source.is_gguf else source.location


def _hub_kwargs(source: ModelSource) -> dict:
    # A local dir never needs the network; asking for it anyway makes a typo hang on retries.
    return {} if source.is_hub else {"local_files_only": True}


def _not_found(source: ModelSource, err: Exception) -> ModelNotFound:
    if source.is_hub:
        return ModelNotFound(
            f"{source.canonical!r} is not a packaged model or a local path, and loading it from the "
            f"Hugging Face hub failed: {err}. {aliases_hint()}"
        )
    return ModelNotFound(f"could not load a model from {source.location}: {err}")


def load_tokenizer(name_or_path: str | os.PathLike = "smollm2-135m-instruct"):
    """The tokenizer for a model name, with a pad token (eos, else unk) so batches can be padded.
    The chat template stored with the model is kept."""
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(_local_dir(source), **_hub_kwargs(source))
    except (OSError, ValueError) as err:
        raise _not_found(source, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.name_or_path = source.canonical
    return tokenizer


def _auto_class(kind: str):
    import transformers

    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}", key="kind")
    return {
        "causal-lm": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
    }[kind]


def load_model(
    name_or_path: str | os.PathLike = "smollm2-135m-instruct",
    *,
    kind: ModelKind = "causal-lm",
    num_labels: int | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "auto",
    quantization: str | None = None,
    double_quant: bool = True,
    compute_dtype: str = "auto",
    allow_pickle: bool = False,
):
    """Load a transformers model in eval mode on `device`.

    name_or_path: packaged alias (`smollm2-135m-instruct`, `all-minilm-l6-v2`), local dir, `.gguf` file, or
    hub id. kind: `causal-lm`, `encoder` (bare AutoModel, e.g. for embeddings) or `sequence-classification`
    (with `num_labels`; its head is new and randomly initialised). A missing pad token id is filled from the
    tokenizer so sequence classifiers can find the last real token of padded rows. quantization (nf4, fp4,
    int8) stores the Linear weights through bitsandbytes, quantised layer by layer as they move to `device`
    (see tuneforge.quant). Weights stored only as a pickle (pytorch_model.bin) load only with allow_pickle=True:
    unpickling can run code from the file."""
    auto_class = _auto_class(kind)
    if num_labels is not None and kind != "sequence-classification":
        raise ConfigError(f"num_labels only applies to kind 'sequence-classification', not {kind!r}", key="num_labels")
    source = resolve_model(name_or_path)
    target_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target_device)
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    location = _local_dir(source)
    if not allow_pickle:
        refuse_pickle_only(source, location)
        extra["use_safetensors"] = True  # never a silent fall back to a .bin file (hub ids included)
    try:
        model = auto_class.from_pretrained(location, dtype=torch_dtype, **extra, **_hub_kwargs(source))
    except (OSError, ValueError) as err:
        raise _not_found(source, err) from err
    if model.config.pad_token_id is None:
        _fill_pad_token_id(model, source, location)
    model.config._name_or_path = source.canonical
    model.name_or_path = source.canonical
    if quantization is not None:
        from ..quant import quantize_model

        quantize_model(model, quantization, double_quant=double_quant, compute_dtype=compute_dtype,
                       device=target_device)
    return model.to(target_device).eval()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_only(source: ModelSource, location: str) -> None:
    """PickleRefused for a local model folder whose weights exist only as pickles (pytorch_model.bin)."""
    from ..errors import PickleRefused

    folder = Path(location)
    if source.is_hub or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES
                     and not p.name.startswith(("training_args", "optimizer", "scheduler", "rng")))
    if pickles:
        raise PickleRefused(pickles[0])


def _fill_pad_token_id(model, source: ModelSource, location: str) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **_hub_kwargs(source))
    except (OSError, ValueError):
        tokenizer = None
    pad_id = None
    if tokenizer is not None:
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.unk_token_id
    if pad_id is None:
        eos = model.config.eos_token_id
        pad_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    model.config.pad_token_id = pad_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = pad_id

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

from ..config.model_options import DTYPES, resolve_device, resolve_dtype  # noqa: F401 (re-exported)
from ..errors import ConfigError, ModelNotFound
from .packaged import ModelSource, aliases_hint, converted_gguf, resolve_model

ModelKind = Literal["causal-lm", "encoder", "sequence-classification", "image-classification"]
MODEL_KINDS = ("causal-lm", "encoder", "sequence-classification", "image-classification")
HEAD_KINDS = ("sequence-classification", "image-classification")  # kinds whose head has num_labels outputs


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
        "image-classification": transformers.AutoModelForImageClassification,
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
    device_map=None,
    max_memory: dict | None = None,
    attn_implementation: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    rope_scaling: dict | None = None,
    allow_pickle: bool = False,
    deferred: bool = False,
):
    """Load a transformers model in eval mode on `device` (or placed by `device_map`).

    name_or_path: packaged alias (`smollm2-135m-instruct`, `all-minilm-l6-v2`), local dir, `.gguf` file, or
    hub id (at `revision`). kind: `causal-lm`, `encoder` (bare AutoModel, e.g. for embeddings) or
    `sequence-classification` (with `num_labels`; its head is new and randomly initialised) or
    `image-classification` (ViT, ResNet, ConvNeXt...; a stored head of another size than `num_labels` is replaced
    by a new random one). A missing pad token
    id is filled from the tokenizer so sequence classifiers can find the last real token of padded rows.
    quantization (nf4, fp4, int8) stores the Linear weights through bitsandbytes, quantised tensor by tensor
    while a safetensors checkpoint is read (models/lean_load.py), so the dense model is never whole in memory.
    device_map: auto, a device, or {module prefix: device} (with max_memory {device: size} for auto).
    attn_implementation: auto (transformers' choice, sdpa), sdpa, flash_attention_2, flex_attention or eager.
    rope_scaling ({rope_type, factor, ...}) goes into the model config (longer context). Every option is checked
    against this machine before any weight is read (config/model_options.py). Weights stored only as a pickle
    (pytorch_model.bin) load only with allow_pickle=True: unpickling can run code from the file.
    deferred=True (a base to be sharded over processes, train/distributed.py) builds the model with placeholder
    weights that each process later fills with its own shard only (models/loader_deferred.py); a checkpoint that
    cannot be read so (not safetensors, a weight missing) loads whole as usual."""
    from ..config.model_options import check_model_options

    auto_class = _auto_class(kind)
    if num_labels is not None and kind not in HEAD_KINDS:
        raise ConfigError(f"num_labels only applies to kinds {' and '.join(HEAD_KINDS)}, not {kind!r}",
                          key="num_labels")
    check_model_options(device=device, device_map=device_map, max_memory=max_memory,
                        attn_implementation=attn_implementation, quantization=quantization, dtype=dtype,
                        rope_scaling=rope_scaling)
    source = resolve_model(name_or_path)
    device_dict = _device_dict(device_map, device)
    target_device = next(iter(device_dict.values())) if device_dict else None  # None: device_map auto
    torch_dtype = resolve_dtype(dtype, target_device or resolve_device("auto"))
    location = _local_dir(source)
    hub = {**_hub_kwargs(source), "trust_remote_code": trust_remote_code}
    if revision is not None and source.is_hub:
        hub["revision"] = revision
    stored_labels = None
    if kind == "image-classification" and num_labels is not None:  # a pretrained head of another size is replaced
        stored_labels = getattr(_load_config(source, location, hub, None, None), "num_labels", None)
    config = _load_config(source, location, hub, num_labels, rope_scaling)
    if stored_labels is not None and stored_labels != num_labels:
        hub["ignore_mismatched_sizes"] = True
    attn = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    if not allow_pickle:
        refuse_pickle_only(source, location)
        hub["use_safetensors"] = True  # never a silent fall back to a .bin file (hub ids included)
    model = None
    if deferred and device_map is None:
        model = _load_deferred(source, location, auto_class, config, torch_dtype, attn, hub, target_device,
                               quantization, double_quant, compute_dtype)
    if model is None and quantization is not None:
        model = _load_quantized(source, location, auto_class, config, torch_dtype, attn, hub, device_dict,
                                max_memory, quantization, double_quant, compute_dtype)
    if model is None:
        placed = {} if device_map is None else {"device_map": _transformers_map(device_map)}
        if max_memory is not None:
            placed["max_memory"] = {_memory_key(k): v for k, v in max_memory.items()}
        try:
            model = auto_class.from_pretrained(location, config=config, dtype=torch_dtype, **attn, **placed, **hub)
        except (OSError, ValueError) as err:
            raise _not_found(source, err) from err
        if quantization is not None:
            from ..quant import quantize_model

            quantize_model(model, quantization, double_quant=double_quant, compute_dtype=compute_dtype,
                           device=target_device)
    if kind != "image-classification" and model.config.pad_token_id is None:
        _fill_pad_token_id(model, source, location)
    model.config._name_or_path = source.canonical
    model.name_or_path = source.canonical
    if device_map is None:
        model = model.to(target_device)
    return model.eval()


def _device_dict(device_map, device) -> dict[str, torch.device] | None:
    """{module prefix: device} for a plain device, a single-device map or an explicit map; None for auto."""
    from ..config.model_options import parse_device

    if device_map is None:
        return {"": resolve_device(device)}
    if device_map == "auto":
        return None if torch.cuda.is_available() else {"": torch.device("cpu")}
    if isinstance(device_map, dict):
        return {k: parse_device(v, "device_map") for k, v in device_map.items()}
    return {"": parse_device(device_map, "device_map")}


def _transformers_map(device_map):
    """Our device_map in the spelling from_pretrained takes (it accepts "cuda:1", ints, "cpu" and "auto")."""
    return dict(device_map) if isinstance(device_map, dict) else device_map


def _memory_key(key):
    text = str(key)
    return int(text.split(":")[1]) if text.startswith("cuda:") else (int(text) if text.isdigit() else text)


def _load_config(source: ModelSource, location: str, hub: dict, num_labels, rope_scaling):
    """The model config, before any weight: where trust_remote_code and rope_scaling are settled."""
    from transformers import AutoConfig

    extra = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        config = AutoConfig.from_pretrained(location, **extra, **hub)
    except (OSError, ValueError) as err:
        if "trust_remote_code" in str(err):
            raise ConfigError(f"{source.canonical!r} runs code from its own repository; set "
                              "trust_remote_code: true if you have read and trust that code", key="trust_remote_code"
                              ) from None
        raise _not_found(source, err) from err
    if rope_scaling is not None:
        from ..config.model_options import apply_rope_scaling

        apply_rope_scaling(config, rope_scaling)
    return config


def _load_quantized(source, location, auto_class, config, torch_dtype, attn, hub, device_dict, max_memory,
                    quantization, double_quant, compute_dtype):
    """Quantise while streaming a safetensors checkpoint; None when it cannot be streamed (dense path then)."""
    from ..quant import QuantSpec
    from ..quant.layers import resolve_compute_dtype
    from .lean_load import load_quantized_streaming, placement

    spec = QuantSpec(quantization, double_quant, resolve_compute_dtype(compute_dtype, torch_dtype))
    spec.validate()
    folder = location
    if source.is_hub:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(location, revision=hub.get("revision"), allow_patterns=["*.json", "*.safetensors"])
    trust = {"trust_remote_code": hub["trust_remote_code"]}

    def build():
        return auto_class.from_config(config, dtype=torch_dtype, **attn, **trust)

    if device_dict is None:  # device_map auto across GPUs: sized on the meta model, then streamed onto that map
        device_dict = _auto_map(build, max_memory)
    model = load_quantized_streaming(folder, build, spec, placement(device_dict))
    if model is not None and len(set(device_dict.values())) > 1:
        from accelerate import dispatch_model

        dispatch_model(model, device_map={k: str(v) for k, v in device_dict.items()})  # moves activations
    return model


def _load_deferred(source, location, auto_class, config, torch_dtype, attn, hub, device, quantization, double_quant,
                   compute_dtype):
    """The model with placeholder weights, each process to read its own shard later; None when the checkpoint
    cannot be read tensor by tensor (then it loads whole)."""
    from .loader_deferred import build_deferred

    spec = None
    if quantization is not None:
        from ..quant import QuantSpec
        from ..quant.layers import resolve_compute_dtype

        spec = QuantSpec(quantization, double_quant, resolve_compute_dtype(compute_dtype, torch_dtype))
        spec.validate()
    folder = location
    if source.is_hub:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(location, revision=hub.get("revision"), allow_patterns=["*.json", "*.safetensors"])

    def build():
        return auto_class.from_config(config, dtype=torch_dtype, **attn, trust_remote_code=hub["trust_remote_code"])

    return build_deferred(folder, build, spec, device)


def _auto_map(build, max_memory) -> dict[str, torch.device]:
    """accelerate's split of the model over the GPUs (and CPU), counting quantised weights at one byte a
    parameter: nf4 takes about half that, the dense embeddings twice, so the split errs on the safe side."""
    from accelerate import infer_auto_device_map, init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    memory = {_memory_key(k): v for k, v in max_memory.items()} if max_memory else None
    found = infer_auto_device_map(model, max_memory=memory, dtype=torch.int8,
                                  no_split_module_classes=getattr(model, "_no_split_modules", None) or [])
    return {k: torch.device(f"cuda:{v}" if isinstance(v, int) else v) for k, v in found.items()}


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

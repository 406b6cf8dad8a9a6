"""Quantise while loading: read a safetensors checkpoint one tensor at a time into a model built without weights,
so the dense model never exists in memory.

Loading dense and quantising afterwards holds the whole model in `dtype` first: 16 GB for an 8B model in bf16,
140 GB for a 70B, before anything shrinks. Here the model is built on the meta device (no storage), and each
checkpoint tensor is read with a plain file read (not a memory map: mapped pages that were touched count toward
the process's resident memory until the whole file is unmapped), cast to the model's dtype, quantised by
bitsandbytes on its way to its device if it is a targeted Linear weight, and dropped. At any moment the
process holds the quantised model so far plus one dense tensor. The quantised bytes equal those of
`quantize_model` on a dense load (same dtype in, same kernel), which tests/models/test_lean_load.py checks.

Falls back (returns None) when the checkpoint is not safetensors or does not name every weight the model needs:
the caller then loads dense and quantises after, as before.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

_SAFE_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def safetensors_files(location: str | os.PathLike) -> list[Path]:
    """The shards of a checkpoint folder: those its index names, else model.safetensors, else none."""
    folder = Path(location)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor name -> {dtype, shape, data_offsets}, byte offset where the data starts)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def iter_tensors(path: Path, names: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of one safetensors file in file order, each read into its own buffer."""
    header, start = read_header(path)
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    with open(path, "rb", buffering=0) as f:
        for name, info in entries:
            if names is not None and name not in names:
                continue
            begin, end = info["data_offsets"]
            dtype = _SAFE_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"{path.name}: tensor {name} has dtype {info['dtype']}, which tuneforge cannot read")
            buf = bytearray(end - begin)
            f.seek(start + begin)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"{path.name}: the file ends inside tensor {name}")
            flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            yield name, flat.reshape(info["shape"])


def _key_map(model: nn.Module, checkpoint_keys: set[str]) -> dict[str, str]:
    """checkpoint key -> model key, allowing the base-model prefix to be present on one side only (a bare
    model's checkpoint into a model with a head, and back), as from_pretrained allows."""
    expected = set(model.state_dict().keys())
    prefix = getattr(model, "base_model_prefix", "") or ""
    out = {}
    for key in checkpoint_keys:
        if key in expected:
            out[key] = key
        elif prefix and f"{prefix}.{key}" in expected:
            out[key] = f"{prefix}.{key}"
        elif prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in expected:
            out[key] = key[len(prefix) + 1:]
    return out


def _tie_groups(model: nn.Module) -> list[set[str]]:
    """Sets of parameter names that are one tensor: shared already, or to be tied by transformers' tie_weights
    (a tied output head is absent from the checkpoint)."""
    groups: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), set()).add(name)
    out = [g for g in groups.values() if len(g) > 1]
    expanded = getattr(model, "get_expanded_tied_weights_keys", None)
    mapping = expanded(all_submodels=True) if expanded is not None else {}
    for target, source in (mapping or {}).items():
        out.append({target, source})
    return out


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str, str]:
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name) if module_name else model, module_name, attr


def load_quantized_streaming(location, build: Callable[[], nn.Module], spec, place: Callable[[str], torch.device],
                             new_modules=("score", "classifier")) -> nn.Module | None:
    """The model `build()` makes (called under accelerate's init_empty_weights), its weights read from the
    safetensors shards in `location` one at a time, targeted Linear layers quantised per `spec` (a QuantSpec)
    onto `place(module name)`. Parameters of modules named in `new_modules` that the checkpoint lacks (a new
    classifier head) are initialised as from_pretrained would. None when this checkpoint cannot be streamed."""
    from ..quant.layers import mark_quantized, quantization_targets, quantized_layer

    planned = empty_model_and_plan(location, build, new_modules)
    if planned is None:
        return None
    model, files, headers, key_map, fresh = planned
    check_placement(model, place)
    targets = set(quantization_targets(model))
    for path in files:
        wanted = {k for k in headers[path] if k in key_map}
        for ckpt_key, tensor in iter_tensors(path, wanted):
            name = key_map[ckpt_key]
            module, module_name, attr = _owner(model, name)
            device = place(module_name)
            if module_name in targets and attr == "weight":
                bias = module.bias if module.bias is not None and not module.bias.is_meta else None
                layer = quantized_layer(module.in_features, module.out_features, tensor.to(module.weight.dtype),
                                        bias, module.bias is not None, spec, device)
                _set_module(model, module_name, layer)
                targets.discard(module_name)
            elif attr in module._parameters:
                old = module._parameters[attr]
                value = tensor.to(old.dtype) if old.is_floating_point() else tensor
                # a dense base weight is a trainable-by-default Parameter as from_pretrained makes it; a
                # quantised layer's bias stays frozen as in quantize_model
                grad = old.requires_grad and not _quantized(module)
                module._parameters[attr] = nn.Parameter(value.to(device), requires_grad=grad)
            else:
                old = module._buffers[attr]
                module._buffers[attr] = (tensor.to(old.dtype) if old.is_floating_point() else tensor).to(device)
            del tensor
            _return_freed_memory()
    _initialise_fresh(model, fresh, place)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    _place_rest(model, place)
    leftover = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers()
                                                                         if b.is_meta]
    if leftover:
        raise RuntimeError(f"lean loading left {len(leftover)} tensors unloaded, e.g. {leftover[:3]}")
    mark_quantized(model, spec)
    return model


def empty_model_and_plan(location, build: Callable[[], nn.Module], new_modules):
    """(model, files, headers, key_map, fresh): the model `build()` makes without allocating its weights, its
    safetensors files and their `plan`; None when there are none or they lack a weight the model needs."""
    from accelerate import init_empty_weights

    files = safetensors_files(location)
    if not files:
        return None
    with init_empty_weights(include_buffers=False):
        model = build()
    planned = plan(model, files, new_modules)
    return None if planned is None else (model, files, *planned)


def plan(model: nn.Module, files: list[Path], new_modules=("score", "classifier")):
    """(headers by file, checkpoint key -> model key, fresh parameter names) for a model built without weights,
    or None when the checkpoint lacks a weight the model needs that is not part of a new head (`new_modules`) or
    tied to a weight it has."""
    headers = {path: read_header(path)[0] for path in files}
    key_map = _key_map(model, {k for h in headers.values() for k in h})
    loaded = set(key_map.values())
    groups = _tie_groups(model)
    tied = {n for g in groups for n in g}
    missing = {k for k in set(model.state_dict().keys()) - loaded if k not in tied}
    for group in groups:
        if not group & loaded:
            missing |= group
    fresh = {k for k in missing if set(k.split(".")) & set(new_modules)}
    return None if missing - fresh else (headers, key_map, fresh)


def check_placement(model: nn.Module, place) -> None:
    """ConfigError, before any weight is read, when `place` has no device for a module that holds weights."""
    for module_name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            try:
                place(module_name)
            except KeyError:
                from ..errors import ConfigError

                raise ConfigError(f"device_map places no device for module {module_name!r}; add it, or an entry "
                                  "\"\" for the rest of the model", key="device_map") from None


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim). Each dense tensor is freed once quantised,
    but glibc raises its mmap threshold to the size of freed blocks, so the next ones come from the heap, whose
    free pages it keeps: measured on a 100M-parameter checkpoint, resident memory grew by 4.7x the quantised
    model's size without this and by 1.9x with it. No-op where there is no glibc."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _quantized(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and not weight.is_meta and not weight.dtype.is_floating_point


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _initialise_fresh(model: nn.Module, names: set[str], place) -> None:
    """A new head's weights: real storage on its device, then the model's own initialiser (as from_pretrained)."""
    modules = sorted({n.rpartition(".")[0] for n in names})
    for module_name in modules:
        module = model.get_submodule(module_name)
        module.to_empty(device=place(module_name))
        with torch.no_grad():
            init = getattr(model, "_init_weights", None)
            if init is not None:
                init(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()


def _place_rest(model: nn.Module, place) -> None:
    """Buffers the model computed itself (rotary frequencies) onto the device of the module that owns them."""
    for module_name, module in model.named_modules():
        for attr, buf in list(module._buffers.items()):
            if buf is not None and not buf.is_meta:
                module._buffers[attr] = buf.to(place(module_name))


def placement(device_map: dict[str, torch.device]) -> Callable[[str], torch.device]:
    """module name -> device by the longest matching prefix of a {module prefix: device} map ("" = the rest)."""
    ordered = sorted(device_map.items(), key=lambda item: -len(item[0]))

    def place(module_name: str) -> torch.device:
        for prefix, device in ordered:
            if prefix == "" or module_name == prefix or module_name.startswith(prefix + "."):
                return device
        raise KeyError(module_name)

    return place

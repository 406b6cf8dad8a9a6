"""Rank-local loading: a model whose base weights are read later, each process of a sharded run reading only the
shard it keeps, so no process ever holds the whole base (FSDP-QLoRA's "low_memory" mode, torchtune's meta-device
init + `load_from_full_model_state_dict` do the same job).

`build_deferred` makes the model with placeholders: every parameter the checkpoint holds is a tensor of its shape,
dtype and device whose one value is expanded over that shape (no memory; NaN for floats, so a use before the real
values arrive shows), 4-bit layers included (`quant.layers.placeholder_4bit_layer`). Buffers, new task heads and
tied weights are settled at once, as `lean_load` does. Adapters are then added on top exactly as on a loaded base
(same shapes, dtypes, devices, random draws) when their initialisation reads no base values
(`Method.init_reads_base`: DoRA's magnitude or PiSSA's SVD do, so their sharded runs load the base whole). Whoever
shards the model (train/distributed.py) turns the placeholders into FSDP's meta shards and fills each process's
shard from `read_shards`, tensor by tensor: a process's peak is its shard plus one tensor in flight.

Who reads what: every process reads the checkpoint itself, with no collective.
- A dense tensor: only this process's rows (dim 0, as FSDP cuts it) are read, one contiguous byte range of the
  file, so the processes together read the dense weights once.
- A tensor quantised to 4 bits: read whole, quantised by the same call as a one-process load, and only this
  process's slice of the packed codes is kept. The quantisation state (one absmax per 64 values, double-quantised
  with an offset that is the mean over the whole tensor) is whole on every process and depends on every value,
  so each process reads every quantised weight: N reads of the linear layers (on one machine the page cache
  serves the second process's). Process 0 reading once and scattering each tensor would read once but need a
  collective per tensor (GPU staging under NCCL) while the others wait for its quantisation: no faster, and not
  the one-process code path for the numbers. Here the values are the one-process values by construction: the
  same bytes through the same cast or the same quantiser, cut where FSDP cuts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .lean_load import (
    _initialise_fresh,
    _owner,
    _place_rest,
    _return_freed_memory,
    _set_module,
    _SAFE_DTYPES,
    empty_model_and_plan,
    iter_tensors,
    read_header,
)

_ATTR = "_tuneforge_deferred"


@dataclasses.dataclass
class Deferred:
    """What a model built by `build_deferred` still has to read: parameter name -> (file, checkpoint key)."""

    entries: dict[str, tuple[Path, str]]
    quantized: dict[str, torch.dtype]  # 4-bit weights: name -> the dense dtype they are quantised from
    spec: object | None  # the QuantSpec, None for a dense base
    device: torch.device  # where a 4-bit weight is quantised (where a one-process load would quantise it)
    params: dict[str, nn.Parameter]  # name -> the placeholder, to follow it when an adapter renames it


def placeholder(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of `shape` that owns one element: NaN for floats (a use before loading shows), 0 otherwise."""
    fill = float("nan") if dtype.is_floating_point else 0
    return torch.full((1,), fill, dtype=dtype, device=device).expand(tuple(shape))


def is_placeholder(tensor: torch.Tensor) -> bool:
    """One element expanded over a shape of several (`placeholder`)."""
    return tensor.numel() > 1 and all(step == 0 for step, n in zip(tensor.stride(), tensor.shape) if n > 1)


def deferred_of(model: nn.Module) -> Deferred | None:
    """The weights a `build_deferred` model has not read yet (None for a loaded model)."""
    return getattr(model, _ATTR, None)


def build_deferred(location, build: Callable[[], nn.Module], spec, device: torch.device,
                   new_modules=("score", "classifier")) -> nn.Module | None:
    """The model `build()` makes, its checkpoint weights placeholders to be read by `read_shards`; `spec` (a
    QuantSpec or None) quantises the Linear layers quantize_model would. None when the checkpoint is not
    safetensors or lacks a weight (the caller loads the whole model then)."""
    from ..quant.layers import mark_quantized, placeholder_4bit_layer, quantization_targets

    planned = empty_model_and_plan(location, build, new_modules)
    if planned is None:
        return None
    model, files, headers, key_map, fresh = planned
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    entries, buffers = {}, {}
    for path in files:
        for key in headers[path]:
            name = key_map.get(key)
            if name in params:
                entries[name] = (path, key)
            elif name is not None:
                buffers.setdefault(path, set()).add(key)
    shapes = dict(model.named_parameters(remove_duplicate=False))
    if any(list(shapes[name].shape) != list(headers[path][key]["shape"]) for name, (path, key) in entries.items()):
        return None  # a stored head of another size (replaced as from_pretrained's ignore_mismatched_sizes does)
    targets = set(quantization_targets(model)) if spec is not None else set()
    quantized = {}
    for name in entries:  # 4-bit layers first: their biases are then set on the new layer below
        module, module_name, attr = _owner(model, name)
        if module_name in targets and attr == "weight":
            quantized[name] = module.weight.dtype
            _set_module(model, module_name, placeholder_4bit_layer(
                module.in_features, module.out_features, module.bias is not None, module.weight.dtype, spec, device))
    for name in entries:
        if name in quantized:
            continue
        module, _, attr = _owner(model, name)
        old = module._parameters[attr]
        weight = getattr(module, "weight", None)
        frozen = weight is not None and not weight.dtype.is_floating_point  # a 4-bit layer's bias
        module._parameters[attr] = nn.Parameter(placeholder(old.shape, old.dtype, device),
                                                requires_grad=old.requires_grad and not frozen)
    for path, names in buffers.items():
        for key, tensor in iter_tensors(path, names):
            module, _, attr = _owner(model, key_map[key])
            old = module._buffers[attr]
            module._buffers[attr] = (tensor.to(old.dtype) if old.is_floating_point() else tensor).to(device)
    _initialise_fresh(model, fresh, lambda _: device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    _place_rest(model, lambda _: device)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"rank-local loading left {len(leftover)} tensors unplaced, e.g. {leftover[:3]}")
    if spec is not None:
        mark_quantized(model, spec)
    _generation_config(model, location)
    placed = {name: model.get_parameter(name) for name in entries}
    object.__setattr__(model, _ATTR, Deferred(entries, quantized, spec, device, placed))
    return model


def to_meta(model: nn.Module) -> dict[int, nn.Parameter]:
    """Swap the placeholders for meta tensors of the same shapes and classes (FSDP shards meta parameters without
    values and refuses the placeholders' zero strides), re-keying what is deferred by the names the parameters
    have now (an adapter wraps its layers: q_proj.weight becomes q_proj.base_layer.weight). Returns {id of a
    placeholder: its meta parameter}, for whoever still holds the placeholders (an optimizer)."""
    deferred = deferred_of(model)
    now: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        now.setdefault(id(p), name)
    lost = [name for name, p in deferred.params.items() if id(p) not in now]
    if lost:
        raise RuntimeError(f"placeholder weights left the model before their shards were read, e.g. {lost[:3]}")
    rename = {name: now[id(p)] for name, p in deferred.params.items()}
    held = {id(p) for p in deferred.params.values()}
    swap: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None and id(p) in held:
                if id(p) not in swap:
                    swap[id(p)] = same_kind(p, torch.empty(p.shape, dtype=p.dtype, device="meta"))
                module._parameters[attr] = swap[id(p)]
    deferred.entries = {rename[n]: v for n, v in deferred.entries.items()}
    deferred.quantized = {rename[n]: v for n, v in deferred.quantized.items()}
    deferred.params = {rename[n]: swap[id(p)] for n, p in deferred.params.items()}
    return swap


def same_kind(param: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    """A new parameter of `param`'s class (bitsandbytes' Params4bit keeps its attributes) holding `data`."""
    if type(param) is nn.Parameter:
        return nn.Parameter(data, requires_grad=param.requires_grad)
    new = torch.Tensor._make_subclass(type(param), data, param.requires_grad)
    new.__dict__.update(param.__dict__)
    return new


def _generation_config(model: nn.Module, location) -> None:
    """generation_config.json, as from_pretrained reads it."""
    if getattr(model, "generation_config", None) is None or not (Path(location) / "generation_config.json").is_file():
        return
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(location)


def read_shards(model: nn.Module, rows: Callable[[int], tuple[int, int]], storage: torch.dtype
                ) -> Iterator[tuple[str, torch.Tensor, object | None]]:
    """(parameter name, this process's rows of its value, QuantState or None) for every placeholder of a
    `build_deferred` model, one tensor at a time in file order. `rows(n)` is the [lo, hi) of the n rows of a
    tensor's first dimension this process keeps. A dense value comes in the parameter's dtype, read from the file's
    bytes of those rows alone; a 4-bit weight is quantised whole (on `Deferred.device`, as a one-process load
    does), its packed codes viewed as a column of `storage` (quant.layers.shard_ready_4bit), and those rows kept."""
    from ..quant.layers import quantized_layer

    deferred = deferred_of(model)
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, (path, key) in deferred.entries.items():
        by_file.setdefault(path, []).append((name, key))
    for path, wanted in by_file.items():
        header, start = read_header(path)
        wanted.sort(key=lambda item: header[item[1]]["data_offsets"][0])
        with open(path, "rb", buffering=0) as f:
            for name, key in wanted:
                info = header[key]
                shape = list(info["shape"])
                if name in deferred.quantized:
                    dense = _read(f, path, key, info, start, 0, shape[0])
                    out_features, in_features = shape
                    layer = quantized_layer(in_features, out_features, dense.to(deferred.quantized[name]), None,
                                            False, deferred.spec, deferred.device)
                    del dense
                    codes = layer.weight.data.reshape(-1).view(storage).view(-1, 1)
                    lo, hi = rows(codes.shape[0])
                    piece, state = codes[lo:hi].clone(), layer.weight.quant_state
                    del layer, codes
                else:
                    lo, hi = rows(shape[0]) if shape else (0, 0)
                    piece, state = _read(f, path, key, info, start, lo, hi).to(_param_dtype(model, name)), None
                yield name, piece, state
                del piece
                _return_freed_memory()


def finish(model: nn.Module) -> None:
    """Forget what was deferred once every placeholder holds its values."""
    if deferred_of(model) is not None:
        object.__delattr__(model, _ATTR)


def _param_dtype(model: nn.Module, name: str) -> torch.dtype:
    module, _, attr = _owner(model, name)
    return module._parameters[attr].dtype


def _read(f, path: Path, key: str, info: dict, start: int, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of one tensor of an open safetensors file (a 0-d tensor whole), read into their own buffer."""
    dtype = _SAFE_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"{path.name}: tensor {key} has dtype {info['dtype']}, which tuneforge cannot read")
    shape = list(info["shape"])
    begin, end = info["data_offsets"]
    if not shape:
        lo, hi, row = 0, 1, end - begin
    else:
        row = (end - begin) // shape[0] if shape[0] else 0
    buf = bytearray((hi - lo) * row)
    f.seek(start + begin + lo * row)
    if f.readinto(buf) != len(buf):
        raise ValueError(f"{path.name}: the file ends inside tensor {key}")
    flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
    return flat.reshape(shape if not shape else [hi - lo, *shape[1:]])

"""Checks of the model-loading keys of a run config (device_map, max_memory, attn_implementation, rope_scaling,
quantization on a device) against the shape of each value and against this machine, before any weight is read.

A run that asks for flash-attention on a machine without it, or for cuda:3 on a two-GPU machine, should stop at
the config, naming the key and what to change, not after minutes of loading. Each check raises ConfigError with
`key` set, so the config loader can add the file and line.
"""
from __future__ import annotations

import importlib.util
import re

import torch

from ..errors import ConfigError

ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flash_attention_2", "flex_attention", "eager")
ROPE_TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3")
QUANT_DEVICE_TYPES = ("cpu", "cuda", "xpu")  # where bitsandbytes has 4-bit / 8-bit kernels
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


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


def parse_device(value, key: str) -> torch.device:
    """A device map entry: 'cpu', 'cuda', 'cuda:N', 'mps', 'xpu:N' or a bare GPU index (as transformers takes)."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a device such as cpu, cuda:0 or a GPU index, got {value!r}", key=key)
    if isinstance(value, int):
        value = f"cuda:{value}"
    if not isinstance(value, str):
        raise ConfigError(f"expected a device such as cpu, cuda:0 or a GPU index, got {value!r}", key=key)
    if value == "disk":
        raise ConfigError("offloading weights to disk is not supported; use cpu for what does not fit a GPU",
                          key=key)
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {value!r} ({err})", key=key) from None


def device_present(device: torch.device) -> bool:
    """Whether this machine has `device` (cuda:N with N < the GPU count, mps when built, cpu always)."""
    if device.type == "cpu" or device.type == "meta":
        return device.type == "cpu"
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return False
    return device.index is None or device.index < backend.device_count()


def _require_present(device: torch.device, key: str) -> None:
    if not device_present(device):
        have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
            else ["cpu"]
        raise ConfigError(f"device {str(device)!r} is not on this machine (it has {', '.join(have)})", key=key)


def parse_memory(value, key: str) -> int:
    """Bytes from an int or a string such as '20GiB' / '500MB'."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"expected a positive size such as 20GiB, 500MB or a byte count, got {value!r}", key=key)
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


def device_map_devices(device_map) -> list[torch.device]:
    """The devices a device_map (None, 'auto', a device, or {module prefix: device}) names; validates its shape."""
    if device_map is None or device_map == "auto":
        return []
    if isinstance(device_map, dict):
        if not device_map:
            raise ConfigError("device_map must not be empty; use auto, a device, or {module prefix: device}",
                              key="device_map")
        for prefix in device_map:
            if not isinstance(prefix, str):
                raise ConfigError(f"device_map keys are module names (\"\" for the whole model), got {prefix!r}",
                                  key="device_map")
        return [parse_device(v, "device_map") for v in device_map.values()]
    return [parse_device(device_map, "device_map")]


def check_model_options(*, device: str = "auto", device_map=None, max_memory=None, attn_implementation: str = "auto",
                        quantization: str | None = None, dtype: str = "auto", rope_scaling=None) -> None:
    """All the checks, in the order a reader would fix them. Nothing here reads a weight."""
    devices = device_map_devices(device_map)
    for dev in devices:
        _require_present(dev, "device_map")
    if device_map is not None and device not in ("auto", None):
        raise ConfigError("set either device or device_map, not both (device_map places the model itself)",
                          key="device_map")
    if max_memory is not None:
        if not isinstance(max_memory, dict) or not max_memory:
            raise ConfigError("max_memory is a mapping such as {0: 20GiB, cpu: 60GiB}", key="max_memory")
        if device_map is None:
            raise ConfigError("max_memory only applies with device_map: auto", key="max_memory")
        for dev, size in max_memory.items():
            _require_present(parse_device(dev, "max_memory"), "max_memory")
            parse_memory(size, "max_memory")
    if not devices:
        devices = [resolve_device(device)] if device_map is None else _auto_devices()
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"unknown attn_implementation {attn_implementation!r}; choose one of "
                          f"{', '.join(ATTN_IMPLEMENTATIONS)}", key="attn_implementation")
    if attn_implementation == "flash_attention_2":
        if any(d.type != "cuda" for d in devices):
            raise ConfigError("flash_attention_2 runs on CUDA GPUs only and this model would sit on "
                              f"{', '.join(sorted({str(d) for d in devices}))}; use sdpa (or auto)",
                              key="attn_implementation")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("flash_attention_2 needs the flash-attn package (`pip install flash-attn "
                              "--no-build-isolation`); or use sdpa, which needs nothing", key="attn_implementation")
        if resolve_dtype(dtype, devices[0]) == torch.float32:
            raise ConfigError("flash_attention_2 computes in bfloat16 or float16; set dtype: bfloat16 (or auto "
                              "on a GPU)", key="attn_implementation")
    if attn_implementation == "flex_attention" and any(d.type == "cpu" for d in devices):
        raise ConfigError("flex_attention cannot train on a CPU (torch has no FlexAttention backward there); use "
                          "auto or sdpa, which attends per example over packed rows on a CPU",
                          key="attn_implementation")
    if quantization is not None:
        bad = sorted({str(d) for d in devices if d.type not in QUANT_DEVICE_TYPES})
        if bad:
            raise ConfigError(f"bitsandbytes cannot quantise to {quantization} on {', '.join(bad)}; it runs on "
                              f"{', '.join(QUANT_DEVICE_TYPES)} (set device: cpu, or quantization: null)",
                              key="quantization")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("quantization needs the bitsandbytes package; install it with "
                              "`pip install bitsandbytes`", key="quantization")
    check_rope_scaling(rope_scaling)


def _auto_devices() -> list[torch.device]:
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def check_rope_scaling(rope_scaling) -> None:
    """{rope_type: yarn|linear|dynamic|longrope|llama3, factor: >1, ...}: what the model config's RoPE takes."""
    if rope_scaling is None:
        return
    if not isinstance(rope_scaling, dict):
        raise ConfigError("rope_scaling is a mapping such as {rope_type: yarn, factor: 4.0}", key="rope_scaling")
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling.rope_type must be one of {', '.join(ROPE_TYPES)}, got {rope_type!r}",
                          key="rope_scaling")
    factor = rope_scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError(f"rope_scaling.factor must be a positive number (the context-length multiple), "
                          f"got {factor!r}", key="rope_scaling")


def apply_rope_scaling(config, rope_scaling: dict) -> None:
    """Merge rope_scaling into the model config before the model is built (transformers 5 keeps RoPE settings,
    rope_theta included, in `rope_parameters`; 4.x in `rope_scaling`)."""
    params = dict(rope_scaling)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    if hasattr(config, "rope_parameters"):
        base = dict(getattr(config, "rope_parameters", None) or {})
        base.pop("type", None)
        config.rope_parameters = {**base, **params}
        if hasattr(config, "standardize_rope_params"):
            config.standardize_rope_params()
        if hasattr(config, "validate_rope"):
            try:
                config.validate_rope()
            except (KeyError, ValueError, TypeError) as err:
                raise ConfigError(f"rope_scaling does not fit this model: {err}", key="rope_scaling") from None
    else:
        config.rope_scaling = params

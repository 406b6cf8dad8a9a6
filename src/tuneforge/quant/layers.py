"""Base weights in 4-bit (NF4 / FP4) or 8-bit through bitsandbytes, for QLoRA; and the way back to dense weights.

QLoRA (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314) freezes the base model in 4-bit and trains LoRA
on top: each Linear weight is cut into blocks of 64 values, each block is scaled by its absolute maximum and
rounded to one of 16 levels, the NormalFloat levels (quantiles of N(0, 1), NF4) or a 4-bit float grid (FP4).
Double quantisation stores those per-block absmax constants themselves in 8 bits (blocks of 256), saving about
0.37 bit per parameter. Each matmul dequantises the weight into `compute_dtype` and multiplies there, so the
adapter trains against dequant(Q(W)). LLM.int8() (Dettmers et al. 2022, https://arxiv.org/abs/2208.07339) keeps
8-bit rows with one scale each and runs outlier input features (|x| > 6) in 16-bit.

Embeddings and the output head stay dense (a tied head shares its weight with the input embedding; a new task
head must train), as in transformers' BitsAndBytesConfig. bitsandbytes chooses its CUDA kernels when the weights
live on a GPU and its CPU path otherwise; this module never quantises by itself.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, NotMergeable

QUANTIZATIONS = ("nf4", "fp4", "int8")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                  "float64": torch.float64}
"""float64 is for numerical checks (a one-process run against a sharded one): bitsandbytes quantises and
dequantises 16/32-bit floats only, so a float64 weight is quantised from its float32 rounding, dequantised to float32
(every value exact in float64) and widened; the matmul then runs in float64 (`_float64_linear4bit`)."""
_ATTR = "_tuneforge_quantization"


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How a base model's Linear layers are stored. JSON-safe, so an adapter can record what it trained on."""

    quantization: str
    """nf4, fp4 (4-bit, blockwise absmax) or int8 (LLM.int8())."""
    double_quant: bool = True
    """4-bit only: quantise the per-block absmax constants too."""
    compute_dtype: str = "float32"
    """dtype the weights are dequantised into for each matmul: float32, bfloat16, float16 (or float64, for
    numerical checks)."""
    blocksize: int = 64
    """Values per absmax block (4-bit)."""

    def validate(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"unknown quantization {self.quantization!r}; choose one of {', '.join(QUANTIZATIONS)} "
                              "(or null for dense weights)", key="quantization")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"unknown compute_dtype {self.compute_dtype!r}; choose one of "
                              f"{', '.join(COMPUTE_DTYPES)} or auto", key="compute_dtype")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def require_bitsandbytes():
    """The bitsandbytes module, or a ConfigError that says how to install it."""
    try:
        import bitsandbytes
    except ImportError as err:
        raise ConfigError(f"model.quantization needs the bitsandbytes package ({err}); install it with "
                          "`pip install bitsandbytes`", key="quantization") from None
    return bitsandbytes


def resolve_compute_dtype(compute_dtype: str, model_dtype: torch.dtype) -> str:
    """'auto' means the model's own dtype (bf16 on a GPU loaded with dtype auto, fp32 on a CPU)."""
    if compute_dtype != "auto":
        return compute_dtype
    return next((name for name, dt in COMPUTE_DTYPES.items() if dt == model_dtype), "float32")


def _skipped(model: nn.Module, skip) -> set[str]:
    """Modules left dense: the output head (a tied head is the input embedding) and the names in `skip`."""
    names = set(skip or ())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is head or name.rsplit(".", 1)[-1] in names:
            names.add(name)
    return names


def quantized_layer(in_features: int, out_features: int, weight: torch.Tensor, bias: torch.Tensor | None,
                    has_bias: bool, spec: QuantSpec, device: torch.device) -> nn.Module:
    """A bitsandbytes layer holding `weight` (dense, (out, in)) quantised on `device`: the one place both the
    dense path (quantize_model) and the streaming loader (models/lean_load.py) make their layers, so both
    give the same bytes. A bias given later is set as a frozen Parameter by the caller."""
    bnb = require_bitsandbytes()
    if spec.quantization == "int8":
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        cls = _float64_linear4bit() if spec.compute_dtype == "float64" else bnb.nn.Linear4bit
        layer = cls(in_features, out_features, bias=has_bias,
                                  compute_dtype=COMPUTE_DTYPES[spec.compute_dtype],
                                  compress_statistics=spec.double_quant, quant_type=spec.quantization, device="meta")
        if device.type == "cpu" and weight.device.type == "cpu":
            packed, state = quantize_4bit_in_chunks(weight, spec)
            layer.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state,
                                             quant_type=spec.quantization, compress_statistics=spec.double_quant,
                                             blocksize=spec.blocksize, bnb_quantized=True)
        else:
            layer.weight = bnb.nn.Params4bit(weight.float() if weight.dtype == torch.float64 else weight,
                                             requires_grad=False, quant_type=spec.quantization,
                                             compress_statistics=spec.double_quant, blocksize=spec.blocksize)
    if bias is not None:
        layer.bias = nn.Parameter(bias.data, requires_grad=False)
    elif has_bias:
        layer.bias = None  # a meta placeholder cannot move; it is put back below for the caller to fill
    layer = layer.to(device)  # bitsandbytes quantises on this move, on the device's own kernels
    if has_bias and bias is None:
        layer.bias = nn.Parameter(torch.empty(out_features, dtype=weight.dtype, device="meta"), requires_grad=False)
    return layer


def placeholder_4bit_layer(in_features: int, out_features: int, has_bias: bool, dense_dtype: torch.dtype,
                           spec: QuantSpec, device: torch.device) -> nn.Module:
    """The 4-bit layer `quantized_layer` would make, with no values yet (rank-local loading,
    models/loader_deferred.py): its packed codes are one zero byte expanded to their shape (no memory), its
    quantisation state carries the shape and dtype the adapters read (`adapter_dtype`) and NaN absmax constants
    (expanded too); the real codes and state are put in later, shard by shard, by the process that holds them."""
    import bitsandbytes.functional as bnbf

    bnb = require_bitsandbytes()
    if spec.quantization == "int8":
        raise ConfigError("an int8 (LLM.int8()) base cannot be loaded shard by shard; use quantization: nf4",
                          key="quantization")
    cls = _float64_linear4bit() if spec.compute_dtype == "float64" else bnb.nn.Linear4bit
    layer = cls(in_features, out_features, bias=has_bias, compute_dtype=COMPUTE_DTYPES[spec.compute_dtype],
                compress_statistics=spec.double_quant, quant_type=spec.quantization, device="meta")
    dtype = torch.float64 if spec.compute_dtype == "float64" else (
        torch.float32 if dense_dtype == torch.float64 else dense_dtype)  # as quantize_4bit_in_chunks records it
    blocks = -(-in_features * out_features // spec.blocksize)
    state = bnbf.QuantState(absmax=torch.full((1,), float("nan"), device=device).expand(blocks),
                            shape=torch.Size((out_features, in_features)), dtype=dtype, blocksize=spec.blocksize,
                            code=bnbf.get_4bit_type(spec.quantization, device=device), quant_type=spec.quantization)
    codes = torch.zeros(1, dtype=torch.uint8, device=device).expand((in_features * out_features + 1) // 2, 1)
    layer.weight = bnb.nn.Params4bit(codes, requires_grad=False, quant_state=state, quant_type=spec.quantization,
                                     compress_statistics=spec.double_quant, blocksize=spec.blocksize,
                                     bnb_quantized=True)
    return layer


CPU_CHUNK = 1 << 18
"""Values per call of bitsandbytes' CPU 4-bit quantiser, which makes ~20 bytes of temporaries per value (fp32
copies, bucket indices): a 5632 x 2048 weight would take 230 MB at once, in chunks it takes 20 MB."""


def quantize_4bit_in_chunks(weight: torch.Tensor, spec: QuantSpec, chunk: int = CPU_CHUNK):
    """(packed uint8 codes, QuantState) equal to `bitsandbytes.functional.quantize_4bit(weight, ...)`, computed in
    chunks of whole blocks. Blocks are quantised independently, so cutting at block boundaries changes nothing;
    the double quantisation of the absmax constants (offset = their mean, then 8-bit blocks of 256) runs once
    over all of them, exactly as bitsandbytes does it."""
    import bitsandbytes.functional as bnbf

    flat = weight.contiguous().reshape(-1)
    flat = flat.float() if flat.dtype == torch.float64 else flat  # bitsandbytes takes 16/32-bit floats
    step = max(spec.blocksize, chunk // spec.blocksize * spec.blocksize)
    packed, absmax = [], []
    for start in range(0, flat.numel(), step):
        codes, state = bnbf.quantize_4bit(flat[start : start + step], blocksize=spec.blocksize,
                                          compress_statistics=False, quant_type=spec.quantization,
                                          quant_storage=torch.uint8)
        packed.append(codes)
        absmax.append(state.absmax)
    codes, absmax = torch.cat(packed), torch.cat(absmax)
    dtype = torch.float64 if spec.compute_dtype == "float64" else flat.dtype  # see COMPUTE_DTYPES
    common = dict(shape=weight.shape, dtype=dtype, blocksize=spec.blocksize,
                  code=bnbf.get_4bit_type(spec.quantization, device=weight.device), quant_type=spec.quantization)
    if not spec.double_quant:
        return codes, bnbf.QuantState(absmax=absmax, **common)
    offset = absmax.mean()
    qabsmax, state2 = bnbf.quantize_blockwise(absmax - offset, blocksize=256)
    return codes, bnbf.QuantState(absmax=qabsmax, offset=offset, state2=state2, **common)


def _quantized_linear(linear: nn.Linear, spec: QuantSpec, device: torch.device) -> nn.Module:
    has_bias = linear.bias is not None
    return quantized_layer(linear.in_features, linear.out_features, linear.weight.data,
                           linear.bias if has_bias else None, has_bias, spec, device)


def quantization_targets(model: nn.Module, skip=("score", "classifier")) -> list[str]:
    """Names of the Linear layers quantize_model replaces: every dense nn.Linear but the output head and the
    modules named in `skip` (new task heads must train)."""
    skipped = _skipped(model, skip)
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and n not in skipped]


def mark_quantized(model: nn.Module, spec: QuantSpec) -> None:
    """Record on the model how its Linear layers are stored (read back by quantization_of)."""
    object.__setattr__(model, _ATTR, spec)


def quantize_model(model: nn.Module, quantization: str, *, double_quant: bool = True, compute_dtype: str = "auto",
                   device: str | torch.device | None = None, skip=("score", "classifier")) -> nn.Module:
    """Replace every dense nn.Linear (but the output head and modules named in `skip`) by a bitsandbytes 4-bit
    or 8-bit layer, in place, one layer at a time so the dense copy of only one weight is alive at once.
    The layers land on `device` (default: where each weight already is). Returns the model."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    spec = QuantSpec(quantization, double_quant, resolve_compute_dtype(compute_dtype, dtype))
    spec.validate()
    if quantization_of(model) is not None:
        raise ConfigError("the model is quantised already", key="quantization")
    # adapter layers (ours and peft's) hold the layer they wrap as `base_layer`: found by structure, as quant
    # sits below methods and does not import them
    if any(name.rsplit(".", 1)[-1] == "base_layer" for name, _ in model.named_modules()):
        raise ConfigError("quantise the base model before adding adapters (its adapter layers must stay dense)",
                          key="quantization")
    for name in quantization_targets(model, skip):
        linear = model.get_submodule(name)
        layer = _quantized_linear(linear, spec, torch.device(device) if device else linear.weight.device)
        _replace(model, name, layer)
    mark_quantized(model, spec)
    return model


def quantization_of(model: nn.Module) -> QuantSpec | None:
    """The QuantSpec `quantize_model` applied to this model, or None for a dense model."""
    return getattr(model, _ATTR, None)


def is_quantized(module: nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (4-bit codes may be stored in a float dtype: see
    `shard_ready_4bit`)."""
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and weight is not None and (
        not weight.dtype.is_floating_point or getattr(weight, "quant_state", None) is not None)


def dequantized(weight: torch.Tensor, dtype: torch.dtype | None = None,
                scb: torch.Tensor | None = None) -> torch.Tensor:
    """The dense (out, in) weight a layer multiplies by: a bitsandbytes 4-bit or 8-bit weight dequantised
    (into `dtype`, else the dtype it was quantised from), a dense weight as it is. An 8-bit layer's row scales
    move from its weight (`weight.SCB`) to the layer's `state.SCB` at its first forward: pass that as `scb`."""
    state = getattr(weight, "quant_state", None)
    if getattr(weight, "SCB", None) is not None:
        scb = weight.SCB
    if state is not None:
        import bitsandbytes.functional as bnbf

        if state.dtype == torch.float64:  # quantised from float32 (see COMPUTE_DTYPES): widen exactly
            narrow = copy.copy(state)
            narrow.dtype = torch.float32
            dense = bnbf.dequantize_4bit(weight.data, narrow).to(torch.float64)
        else:
            dense = bnbf.dequantize_4bit(weight.data, state).to(state.dtype)
    elif scb is not None:
        dense = weight.data.float() * (scb.float()[:, None] / 127.0)
    elif not weight.dtype.is_floating_point:
        raise NotMergeable(f"cannot dequantise a weight of dtype {weight.dtype}")
    else:
        dense = weight
    return dense.to(dtype) if dtype is not None else dense


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every quantised layer (also one wrapped by an adapter) by a new dense nn.Linear in `dtype`
    holding dequant(Q(W)): the weights the adapters were trained against. The 4-bit/8-bit tensors are never
    written to; merging afterwards adds the adapter to the new dense weights. Returns the model."""
    targets = [n for n, m in model.named_modules() if is_quantized(m)]
    for name in targets:
        layer = model.get_submodule(name)
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        scb = getattr(getattr(layer, "state", None), "SCB", None)
        dense.weight = nn.Parameter(dequantized(layer.weight, dtype, scb).detach().clone(), requires_grad=False)
        if layer.bias is not None:
            dense.bias = nn.Parameter(layer.bias.data.to(dtype), requires_grad=False)
        _replace(model, name, dense)
    if quantization_of(model) is not None:
        object.__delattr__(model, _ATTR)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy: parameters, buffers and bitsandbytes' quantisation constants."""
    total, seen = 0, set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        for extra in _state_tensors(state) if state is not None else ():
            total += extra.numel() * extra.element_size()
        scale = getattr(tensor, "SCB", None)
        if scale is not None:
            total += scale.numel() * scale.element_size()
    return total


def _state_tensors(state) -> list[torch.Tensor]:
    out = [t for t in (state.absmax, state.code) if isinstance(t, torch.Tensor)]
    if getattr(state, "state2", None) is not None:
        out += _state_tensors(state.state2)
    if isinstance(getattr(state, "offset", None), torch.Tensor):
        out.append(state.offset)
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


_FLOAT64_LINEAR4BIT = []


def _float64_linear4bit():
    """bitsandbytes' Linear4bit multiplying in float64 (numerical checks): its own 4-bit GEMM takes 16/32-bit
    floats only, so the weight is dequantised (`dequantized`: float32 values, widened exactly) and multiplied by
    torch. Made on first use, so importing this module never imports bitsandbytes."""
    if not _FLOAT64_LINEAR4BIT:
        bnb = require_bitsandbytes()

        class Linear4bitFloat64(bnb.nn.Linear4bit):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if getattr(self.weight, "quant_state", None) is None:  # gathered by FSDP: see shard_ready_4bit
                    self.weight.quant_state = self.quant_state
                bias = None if self.bias is None else self.bias.to(torch.float64)
                out = nn.functional.linear(x.to(torch.float64), dequantized(self.weight, torch.float64), bias)
                return out.to(x.dtype)

        _FLOAT64_LINEAR4BIT.append(Linear4bitFloat64)
    return _FLOAT64_LINEAR4BIT[0]


def shard_ready_4bit(model: nn.Module, storage: torch.dtype) -> list[nn.Module]:
    """Make the 4-bit layers shardable by FSDP (FSDP-QLoRA, as Answer.AI and bitsandbytes' `quant_storage` do it):
    each layer's packed codes are viewed, without a copy, as a flat column of `storage` floats (the dtype of the
    model's other weights, so FSDP shards them like any frozen weight and mixed precision never casts them), and
    the quantisation state (absmax constants, code book, shape: a few KB a layer) is kept on the layer, whole on
    every process. Returns the layers, for `reattach_quant_states` and `unshard_ready_4bit`."""
    spec = quantization_of(model)
    if spec is not None and spec.quantization == "int8":
        raise ConfigError("an int8 (LLM.int8()) base cannot be sharded: its row scales live beside the weight "
                          "and change at the first forward; use quantization: nf4 (QLoRA), or train.shard: false",
                          key="train.shard")
    layers = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is None or not isinstance(module, nn.Linear):
            continue
        packed = weight.data.reshape(-1)
        if packed.numel() * packed.element_size() % storage.itemsize:
            raise ConfigError(f"a 4-bit layer of {packed.numel()} bytes cannot be stored as {storage} to be "
                              "sharded; its weight count must be a multiple of 8", key="train.shard")
        weight.data = packed.view(storage).view(-1, 1)
        weight.quant_storage = module.quant_storage = storage
        module.quant_state = state
        layers.append(module)
    return layers


def reattach_quant_states(layers: list[nn.Module]) -> None:
    """FSDP gathers a sharded weight into a plain Parameter, without bitsandbytes' `quant_state`: put the layer's
    own copy back on it (bitsandbytes' forward does the same, fix_4bit_weight_quant_state_from_module), so the
    fused LoRA kernel and `dequantized` see a 4-bit weight. Shards (DTensors) are left alone."""
    for layer in layers:
        weight = layer.weight
        if getattr(weight, "quant_state", None) is None and type(weight.data).__name__ != "DTensor":
            weight.quant_state = layer.quant_state


def unshard_ready_4bit(layers: list[nn.Module]) -> None:
    """Undo `shard_ready_4bit` on whole weights: the packed codes as uint8 again, the state on the weight."""
    for layer in layers:
        weight = layer.weight
        weight.data = weight.data.reshape(-1).view(torch.uint8).view(-1, 1)
        weight.quant_storage = layer.quant_storage = torch.uint8
        weight.quant_state = layer.quant_state

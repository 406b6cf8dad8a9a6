"""VeRA: one pair of frozen random matrices shared by every adapted layer, and two trainable vectors per layer,

    h = W x + lambda_b * (B (lambda_d * (A x))),

A (r x in_max) and B (out_max x r) drawn once (kaiming-uniform) from the seed `projection_prng_key`, and each
layer using their top-left (r x in) and (out x r) slices; lambda_d (r, init d_initial) and lambda_b (out, init
0, so a fresh adapter is the identity) train. Kopiczko et al. 2023, https://arxiv.org/abs/2310.11454.

As peft (peft_type VERA): the file holds vera_lambda_b / vera_lambda_d per layer and, with save_projection,
the shared matrices under `base_model.vera_A` / `base_model.vera_B`; without them they are redrawn from the seed.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterMismatch
from ..registry import METHODS
from .base import AdapterLayer, MethodConfig, adapter_dtype, check
from .lora import _conv1d
from .target_spec import LayerSelection, SavedModules, TargetModules
from .weight_method import WeightMethod

PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")


@dataclasses.dataclass
class VeraConfig(MethodConfig, SavedModules, LayerSelection, TargetModules):
    """VeRA hyper-parameters; names and defaults are peft's VeraConfig."""

    method = "vera"
    r: int = 256
    """Rank of the shared random projections; VeRA affords far larger r than LoRA (the vectors stay small)."""
    projection_prng_key: int = 0
    """Seed of the shared A and B; every VeRA adapter on one model must use the same."""
    save_projection: bool = True
    """Store A and B in the adapter file (safe everywhere) instead of redrawing them from the seed."""
    vera_dropout: float = 0.0
    """Dropout on the adapter's input path only."""
    d_initial: float = 0.1
    """Initial value of every entry of lambda_d (small values, <= 0.1, work best)."""
    fan_in_fan_out: bool = False
    """Base weight stored as (in, out), as GPT-2's Conv1D; set automatically for Conv1D."""
    bias: str = "none"
    """Which biases train: none, all (every bias of the model), vera_only (biases of adapted layers)."""
    init_weights: bool = True
    """True: lambda_b = 0, lambda_d = d_initial (identity at start). False: lambda_b = 1, lambda_d ~ N(0, 1)."""

    def validate(self) -> None:
        check(isinstance(self.r, int) and self.r > 0, "r", f"r must be a positive integer, got {self.r!r}")
        check(0.0 <= self.vera_dropout < 1.0, "vera_dropout", "vera_dropout must be in [0, 1)")
        check(self.bias in ("none", "all", "vera_only"), "bias", "bias must be none, all or vera_only")
        check(isinstance(self.projection_prng_key, int), "projection_prng_key",
              "projection_prng_key must be an integer")


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """peft's seeded draw: U(-b, b), b = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjection(nn.Module):
    """The shared frozen A and B of one adapter: one module object referenced by every VeRA layer, so a model
    move or cast keeps them shared. Non-persistent buffers: the method decides what the file holds."""

    def __init__(self, r: int, in_max: int, out_max: int, seed: int):
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("A", kaiming_uniform((r, in_max), generator), persistent=False)
        self.register_buffer("B", kaiming_uniform((out_max, r), generator), persistent=False)


class VeraLinear(AdapterLayer):
    """VeRA on nn.Linear and transformers' Conv1D."""

    adapter_attrs = ("vera_lambda_b", "vera_lambda_d")
    per_adapter_values = ("r",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_projection = nn.ModuleDict()
        self.vera_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        shape = base_layer.weight.shape
        self.out_features, self.in_features = shape[::-1] if self.fan_in_fan_out else shape

    def update_layer(self, name: str, cfg: VeraConfig, module_name: str = "") -> None:
        self.r[name] = cfg.r
        w = self.base_layer.weight
        dtype = adapter_dtype(w)
        if cfg.init_weights:
            lambda_b, lambda_d = torch.zeros(self.out_features), torch.full((cfg.r,), float(cfg.d_initial))
        else:
            lambda_b, lambda_d = torch.ones(self.out_features), torch.randn(cfg.r)
        self.vera_lambda_b[name] = nn.Parameter(lambda_b.to(w.device, dtype))
        self.vera_lambda_d[name] = nn.Parameter(lambda_d.to(w.device, dtype))
        self.vera_dropout[name] = nn.Dropout(cfg.vera_dropout) if cfg.vera_dropout > 0 else nn.Identity()
        if name not in self.active_adapters:
            self.active_adapters.append(name)

    def attach_projection(self, name: str, projection: VeraProjection) -> None:
        self.vera_projection[name] = projection

    def sliced(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        proj = self.vera_projection[name]
        return proj.A[:, : self.in_features], proj.B[: self.out_features, :]

    def adapter_forward(self, x, result, name, *args, **kwargs):
        A, B = self.sliced(name)
        lambda_b, lambda_d = self.vera_lambda_b[name], self.vera_lambda_d[name]
        x = self.vera_dropout[name](x.to(lambda_d.dtype))
        return (result + lambda_b * F.linear(lambda_d * F.linear(x, A), B)).to(result.dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        A, B = self.sliced(name)
        delta = (self.vera_lambda_b[name].unsqueeze(1) * B) @ (self.vera_lambda_d[name].unsqueeze(1) * A)
        return delta.T if self.fan_in_fan_out else delta

    def delete_adapter(self, adapter_name: str, keep_merged: bool = False) -> None:
        super().delete_adapter(adapter_name, keep_merged)
        for container in (self.vera_projection, self.vera_dropout):
            if adapter_name in container:
                del container[adapter_name]


@METHODS.register("vera")
class Vera(WeightMethod):
    init_reads_base = False  # projections and scales from shapes alone
    name = "vera"
    kind = "weight"
    mergeable = True
    config_class = VeraConfig
    peft_type = "VERA"
    paper = "https://arxiv.org/abs/2310.11454"
    formula = "sum over adapted layers of (out + r)  (A, B shared and frozen)"
    layer_types = ((nn.Linear, VeraLinear), (_conv1d(), VeraLinear))

    def apply(self, model, cfg: VeraConfig, adapter_name: str) -> None:
        super().apply(model, cfg, adapter_name)
        layers = [layer for _, layer in self.layers(model, adapter_name)]
        in_max = max(layer.in_features for layer in layers)
        out_max = max(layer.out_features for layer in layers)
        projection = VeraProjection(cfg.r, in_max, out_max, cfg.projection_prng_key)
        w = layers[0].base_layer.weight
        projection.to(w.device, adapter_dtype(w))
        for layer in layers:
            layer.attach_projection(adapter_name, projection)

    def projection(self, model, adapter_name: str) -> VeraProjection:
        return self.layers(model, adapter_name)[0][1].vera_projection[adapter_name]

    def extra_trainable(self, model, cfg: VeraConfig, adapter_name):
        if cfg.bias == "all":
            return [(n, p) for n, p in model.named_parameters()
                    if n.endswith("bias") and ".vera_lambda_" not in n and ".original_module." not in n]
        if cfg.bias == "vera_only":
            return [(f"{m}.base_layer.bias", layer.base_layer.bias) for m, layer in self.layers(model, adapter_name)
                    if getattr(layer.base_layer, "bias", None) is not None]
        return []

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        state = super().state_dict(model, adapter_name, cfg)
        if cfg is None or cfg.save_projection:
            proj = self.projection(model, adapter_name)
            state.update(zip(PROJECTION_KEYS, (proj.A.detach(), proj.B.detach())))
        return state

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        state = dict(state)
        saved = [state.pop(k, None) for k in PROJECTION_KEYS]
        if all(t is not None for t in saved):
            proj = self.projection(model, adapter_name)
            for key, buf, tensor in zip(PROJECTION_KEYS, (proj.A, proj.B), saved):
                if tuple(tensor.shape) != tuple(buf.shape):
                    raise AdapterMismatch(f"{key}: the adapter has shape {tuple(tensor.shape)}, this model needs "
                                          f"{tuple(buf.shape)}; the adapter was saved for another base model")
            proj.A, proj.B = (t.to(buf.device, buf.dtype) for t, buf in zip(saved, (proj.A, proj.B)))
        super().load_state_dict(model, state, adapter_name, cfg)

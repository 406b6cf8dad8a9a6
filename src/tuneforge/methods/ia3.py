"""(IA)^3: learned vectors that rescale activations. Keys and values are scaled at the layer output,
k' = l_k * (W_k x), v' = l_v * (W_v x); the feed-forward is scaled at the input of its down projection,
h = W_down (l_ff * a). Liu et al. 2022, https://arxiv.org/abs/2205.05638.

As peft's IA3 (same config fields, the `ia3_l` keys, the same default targets): the vectors start at one, so a
fresh adapter is the identity; an output scale has shape (out, 1), an input ("feedforward") scale (1, in), and on
Conv2d/Conv3d (1, channels, 1, ...). Trainable parameters: the sum over targets of out_features (in_features
for feed-forward targets). Mergeable: W' = diag(l) W (an output scale also scales the bias) or W' = W diag(l);
unmerging divides by l, exact up to rounding, and is refused when l has zero entries (that merge erased rows).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Union

import torch
from torch import nn

from ..errors import NotMergeable, TargetNotFound
from ..registry import METHODS
from .base import AdapterLayer, MethodConfig, adapter_dtype, check
from .target_spec import ExcludeModules, SavedModules, TargetModules
from .targeting import candidate_modules, select_modules
from .weight_method import WeightMethod

# peft's defaults per architecture (TRANSFORMERS_MODELS_TO_IA3_{TARGET,FEEDFORWARD}_MODULES_MAPPING).
DEFAULT_TARGETS = {
    "t5": ["k", "v", "wo"], "gpt2": ["c_attn", "mlp.c_proj"], "bloom": ["query_key_value", "mlp.dense_4h_to_h"],
    "roberta": ["key", "value", "output.dense"], "opt": ["q_proj", "k_proj", "fc2"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"], "llama": ["k_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"], "bert": ["key", "value", "output.dense"],
    "falcon": ["query_key_value", "dense_4h_to_h"], "phi": ["q_proj", "v_proj", "fc2"],
    "gemma": ["q_proj", "v_proj", "down_proj"], "qwen2": ["q_proj", "v_proj", "down_proj"],
    "qwen3": ["q_proj", "v_proj", "down_proj"],
}
DEFAULT_FEEDFORWARD = {
    "t5": ["wo"], "gpt2": ["mlp.c_proj"], "bloom": ["mlp.dense_4h_to_h"], "roberta": ["output.dense"],
    "opt": ["fc2"], "gpt_neox": ["dense_4h_to_h"], "llama": ["down_proj"], "mistral": ["down_proj"],
    "bert": ["output.dense"], "falcon": ["dense_4h_to_h"], "phi": ["fc2"], "gemma": ["down_proj"],
    "qwen2": ["down_proj"], "qwen3": ["down_proj"],
}


@dataclasses.dataclass
class IA3Config(MethodConfig, SavedModules, ExcludeModules, TargetModules):
    """(IA)^3 settings; field names and defaults are peft's so adapter_config.json matches. target_modules None:
    peft's default for the architecture (llama: k_proj, v_proj, down_proj; bert: key, value, output.dense)."""

    method = "ia3"
    feedforward_modules: Union[list[str], str, None] = None
    """Targets scaled at their input instead of their output: names (a plain suffix, as peft matches them) or a
    regex (full match); a subset of target_modules. None: the architecture default (llama: down_proj)."""
    init_ia3_weights: bool = True
    """True: vectors start at one (identity). False: random normal (tests)."""

    def validate(self) -> None:
        check(isinstance(self.init_ia3_weights, bool), "init_ia3_weights", "init_ia3_weights must be true or false")
        if isinstance(self.target_modules, list) and isinstance(self.feedforward_modules, list):
            check(set(self.feedforward_modules) <= set(self.target_modules), "feedforward_modules",
                  "feedforward_modules must be a subset of target_modules")


def is_feedforward(module_name: str, feedforward) -> bool:
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, module_name) is not None
    return any(module_name.endswith(key) for key in feedforward)


class IA3Layer(AdapterLayer):
    """(IA)^3 vectors on nn.Linear, transformers' Conv1D (weight stored (in, out)), nn.Conv2d and nn.Conv3d."""

    adapter_attrs = ("ia3_l",)
    per_adapter_values = ("feedforward",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}
        self.is_conv = isinstance(base_layer, (nn.Conv2d, nn.Conv3d))
        self.fan_in_fan_out = not self.is_conv and not isinstance(base_layer, nn.Linear)
        w = base_layer.weight
        if self.is_conv:
            self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        elif self.fan_in_fan_out:
            self.in_features, self.out_features = w.shape[0], w.shape[1]
        else:
            self.in_features, self.out_features = w.shape[1], w.shape[0]

    def update_layer(self, name: str, cfg: IA3Config, module_name: str = "") -> None:
        ff = self.feedforward[name] = is_feedforward(module_name, cfg.feedforward_modules)
        w = self.base_layer.weight
        if self.is_conv:
            shape = (1, self.in_features if ff else self.out_features) + (1,) * (w.dim() - 2)
        else:
            shape = (1, self.in_features) if ff else (self.out_features, 1)
        dtype = adapter_dtype(w)
        vector = torch.randn(shape, device=w.device, dtype=dtype)
        if cfg.init_ia3_weights:
            vector.fill_(1.0)
        self.ia3_l[name] = nn.Parameter(vector)
        if name not in self.active_adapters:
            self.active_adapters.append(name)

    def _vector(self, name: str) -> torch.Tensor:
        """The scale in the shape that broadcasts against the activations."""
        return self.ia3_l[name] if self.is_conv else self.ia3_l[name].flatten()

    @staticmethod
    def _scaled(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (t.to(scale.dtype) * scale).to(t.dtype)

    def forward(self, x, *args, **kwargs):
        if self.disabled or self.row_adapters is not None:
            return super().forward(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.ia3_l and a not in self.merged_adapters]
        for name in active:
            if self.feedforward[name]:
                x = self._scaled(x, self._vector(name))
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            if not self.feedforward[name]:
                result = self._scaled(result, self._vector(name))
        return result

    def adapter_forward(self, x, result, name, *args, **kwargs):
        """One adapter on top of result = base_layer(x) (the rows of a mixed batch)."""
        if self.feedforward[name]:
            return self.base_layer(self._scaled(x, self._vector(name)), *args, **kwargs)
        return self._scaled(result, self._vector(name))

    def _weight_scale(self, name: str) -> torch.Tensor:
        """The scale in the shape that broadcasts against the base weight."""
        scale, base = self.ia3_l[name].detach(), self.base_layer
        if not self.is_conv:
            return scale.T if self.fan_in_fan_out else scale
        if not self.feedforward[name]:
            return scale.transpose(0, 1)
        if base.groups == 1:
            return scale
        in_per_group, out_per_group = base.in_channels // base.groups, base.out_channels // base.groups
        scale = scale.reshape(base.groups, 1, in_per_group, *scale.shape[2:])
        scale = scale.expand(base.groups, out_per_group, in_per_group, *scale.shape[3:])
        return scale.reshape(base.out_channels, in_per_group, *scale.shape[3:])

    def _rescale(self, name: str, divide: bool) -> None:
        base, scale = self.base_layer, self._weight_scale(name)
        op = torch.Tensor.div_ if divide else torch.Tensor.mul_
        with torch.no_grad():
            op(base.weight, scale.to(base.weight.dtype))
            if not self.feedforward[name] and getattr(base, "bias", None) is not None:
                op(base.bias, self.ia3_l[name].detach().reshape(base.bias.shape).to(base.bias.dtype))

    def merge_adapter(self, name: str) -> None:
        if name in self.merged_adapters or name not in self.ia3_l:
            return
        self._rescale(name, divide=False)
        self.merged_adapters.append(name)

    def unmerge_adapter(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        if (self.ia3_l[name] == 0).any():
            raise NotMergeable(f"(IA)^3 adapter {name!r} scales some channels by exactly 0, so merging erased them "
                               "from the base weights; it cannot be unmerged")
        self._rescale(name, divide=True)
        self.merged_adapters.remove(name)


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


@METHODS.register("ia3")
class IA3(WeightMethod):
    init_reads_base = False  # scales drawn from shapes alone
    name = "ia3"
    kind = "weight"
    mergeable = True
    config_class = IA3Config
    peft_type = "IA3"
    paper = "https://arxiv.org/abs/2205.05638"
    formula = "sum over adapted layers of out_features (in_features for feedforward_modules)"
    layer_types = ((nn.Linear, IA3Layer), (_conv1d(), IA3Layer), (nn.Conv2d, IA3Layer), (nn.Conv3d, IA3Layer))

    def resolved(self, model: nn.Module, cfg: IA3Config) -> IA3Config:
        """The config with peft's architecture defaults filled in (a model without one: no feed-forward targets)."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        targets = cfg.target_modules
        if targets is None:
            if model_type not in DEFAULT_TARGETS:
                names = sorted({n.split(".")[-1] for n in candidate_modules(model, self.supported_types())})
                raise TargetNotFound(f"ia3: no target_modules given and no default for model type {model_type!r}; "
                                     f"modules that can be targeted: {', '.join(names)}")
            targets = DEFAULT_TARGETS[model_type]
        feedforward = cfg.feedforward_modules
        if feedforward is None:
            feedforward = DEFAULT_FEEDFORWARD.get(model_type, [])
        return cfg.replace(target_modules=targets, feedforward_modules=feedforward)

    def select_targets(self, model, cfg):
        cfg = self.resolved(model, cfg)
        return select_modules(model, cfg.target_modules, self.supported_types(),
                              exclude_modules=cfg.exclude_modules, method=self.name)

    def apply(self, model, cfg, adapter_name) -> None:
        super().apply(model, self.resolved(model, cfg), adapter_name)

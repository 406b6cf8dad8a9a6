"""Bottleneck adapters: a small residual MLP on a sub-layer's output, h' = h + W_up f(W_down h + b_down) + b_up.

Houlsby et al. 2019, https://arxiv.org/abs/1902.00751 (`config: houlsby`: after the attention output projection
and after the feed-forward) and Pfeiffer et al. 2020, https://arxiv.org/abs/2005.00247 (`config: pfeiffer`:
after the feed-forward only). As the adapter-transformers library does, the adapter wraps the output projection
(Llama: o_proj, down_proj; BERT: attention.output.dense, output.dense), so it acts before the residual add and
LayerNorm. W_down: (m, d) with m = bottleneck_size or d // reduction_factor, drawn N(0, 0.01^2); W_up starts at
zero, so a fresh adapter is the identity. Trainable parameters per adapted layer: 2 d m + m + d.
Not mergeable: f is non-linear.
"""
from __future__ import annotations

import dataclasses
from typing import Union

import torch.nn.functional as F
from torch import nn

from ..errors import NotMergeable, TargetNotFound
from ..registry import METHODS
from .base import AdapterLayer, MethodConfig, adapter_dtype, check
from .target_spec import SavedModules, TargetModules
from .targeting import candidate_modules, select_modules
from .weight_method import WeightMethod

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}
# model type -> (after the attention output, after the feed-forward): full-name regexes.
SITES = {
    "llama": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "mistral": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "qwen2": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "gemma": (r".*\.self_attn\.o_proj", r".*\.mlp\.down_proj"),
    "bert": (r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"),
    "roberta": (r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense"),
    "gpt2": (r".*\.attn\.c_proj", r".*\.mlp\.c_proj"),
}


@dataclasses.dataclass
class BottleneckConfig(MethodConfig, SavedModules, TargetModules):
    """Bottleneck adapter settings. target_modules: the output modules to wrap; None: the sites `config` names for
    the architecture."""

    method = "bottleneck"
    config: str = "pfeiffer"
    """houlsby: adapters after the attention output and after the feed-forward; pfeiffer: after the feed-forward."""
    reduction_factor: int = 16
    """Bottleneck width m = hidden size // reduction_factor (at least 1)."""
    bottleneck_size: Union[int, None] = None
    """Bottleneck width m, overriding reduction_factor."""
    non_linearity: Union[str, None] = None
    """relu, gelu or silu. None: the paper's choice (houlsby: silu, i.e. swish; pfeiffer: relu)."""

    def validate(self) -> None:
        check(self.config in ("houlsby", "pfeiffer"), "config", "config must be houlsby or pfeiffer")
        check(isinstance(self.reduction_factor, int) and self.reduction_factor > 0, "reduction_factor",
              "reduction_factor must be a positive integer")
        check(self.bottleneck_size is None or (isinstance(self.bottleneck_size, int) and self.bottleneck_size > 0),
              "bottleneck_size", "bottleneck_size must be a positive integer or null")
        check(self.non_linearity is None or self.non_linearity in ACTIVATIONS, "non_linearity",
              f"non_linearity must be one of {', '.join(ACTIVATIONS)}")

    def activation(self) -> str:
        return self.non_linearity or ("silu" if self.config == "houlsby" else "relu")


class BottleneckLayer(AdapterLayer):
    """A down/up projection pair per adapter on the output of nn.Linear or transformers' Conv1D."""

    adapter_attrs = ("adapter_down", "adapter_up")
    per_adapter_values = ("non_linearity",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.non_linearity: dict[str, str] = {}
        w = base_layer.weight
        self.out_features = w.shape[0] if isinstance(base_layer, nn.Linear) else w.shape[1]

    def update_layer(self, name: str, cfg: BottleneckConfig, module_name: str = "") -> None:
        d = self.out_features
        m = cfg.bottleneck_size or max(1, d // cfg.reduction_factor)
        down, up = nn.Linear(d, m), nn.Linear(m, d)
        nn.init.normal_(down.weight, std=1e-2)
        for t in (down.bias, up.weight, up.bias):
            nn.init.zeros_(t)
        w = self.base_layer.weight
        dtype = adapter_dtype(w)
        self.adapter_down[name], self.adapter_up[name] = down.to(w.device, dtype), up.to(w.device, dtype)
        self.non_linearity[name] = cfg.activation()
        if name not in self.active_adapters:
            self.active_adapters.append(name)

    def adapter_forward(self, x, result, name, *args, **kwargs):
        down, up = self.adapter_down[name], self.adapter_up[name]
        h = ACTIVATIONS[self.non_linearity[name]](down(result.to(down.weight.dtype)))
        return (result + up(h)).to(result.dtype)


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


@METHODS.register("bottleneck")
class Bottleneck(WeightMethod):
    init_reads_base = False  # new layers drawn from shapes alone
    name = "bottleneck"
    kind = "weight"
    mergeable = False
    config_class = BottleneckConfig
    paper = "https://arxiv.org/abs/1902.00751"
    formula = "sum over adapted layers of 2*d*m + m + d, m = bottleneck_size or d // reduction_factor"
    layer_types = ((nn.Linear, BottleneckLayer), (_conv1d(), BottleneckLayer))

    def select_targets(self, model, cfg: BottleneckConfig):
        targets = cfg.target_modules
        if targets is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            if model_type not in SITES:
                names = sorted({n.split(".")[-1] for n in candidate_modules(model, self.supported_types())})
                raise TargetNotFound(f"bottleneck: no target_modules given and no default sites for model type "
                                     f"{model_type!r}; modules that can be targeted: {', '.join(names)}")
            attention, feed_forward = SITES[model_type]
            targets = f"{attention}|{feed_forward}" if cfg.config == "houlsby" else feed_forward
        return select_modules(model, targets, self.supported_types(), method=self.name)

    def merge(self, model, adapter_name) -> None:
        raise NotMergeable("bottleneck adapters pass activations through a non-linearity, so they have no weight "
                           "delta to merge; use unload(model, merge=False) to drop them")

    def unmerge(self, model, adapter_name) -> None:
        raise NotMergeable("bottleneck adapters are never merged, so there is nothing to unmerge")

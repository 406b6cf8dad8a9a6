"""DoRA: weight-decomposed LoRA. The adapted weight is split into a trainable magnitude and a direction,

    W' = m * (W + s B A) / ||W + s B A||_row,     h = W' x + bias,

with m a vector of one entry per output feature (peft's `lora_magnitude_vector`), initialised to
||W + s B A||_row so a fresh adapter leaves the layer unchanged. As in the paper (section 4.3) and peft, the row
norm is treated as a constant (detached) during backpropagation. Computed without forming W':

    h = base(x) + (m / n - 1) * (base(x) - bias) + (m / n) * s * B A x,      n = ||W + s B A||_row.

With dropout active in training, base(x) - bias is recomputed as W dropout(x) (peft does the same).
Liu et al. 2024, https://arxiv.org/abs/2402.09353. Files are peft's: peft_type LORA with use_dora true.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import METHODS
from .lora import Lora, LoraConfig, LoraLinear, _conv1d


@dataclasses.dataclass
class DoraConfig(LoraConfig):
    """DoRA takes LoRA's fields; bias, rank_pattern and the rest mean the same."""

    method = "dora"


class DoraLinear(LoraLinear):
    """LoRA plus a magnitude vector on nn.Linear and transformers' Conv1D."""

    adapter_attrs = ("lora_A", "lora_B", "lora_magnitude_vector")
    per_adapter_values = LoraLinear.per_adapter_values + ("merge_norm",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_magnitude_vector = nn.ParameterDict()
        self.merge_norm: dict[str, torch.Tensor] = {}  # n at merge time, so unmerge inverts exactly

    def update_layer(self, name: str, cfg: DoraConfig, module_name: str = "") -> None:
        super().update_layer(name, cfg, module_name)
        self.lora_magnitude_vector[name] = nn.Parameter(self.weight_norm(name))

    def combined_change(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """m (W + s B A) / ||W + s B A|| - W, per output row (delta = s B A, float32)."""
        W = self.base_weight().detach().float()
        direction = W + delta
        scale = self.lora_magnitude_vector[name].detach().float() / torch.linalg.norm(direction, dim=1)
        return scale[:, None] * direction - W

    def after_combine(self, name: str) -> None:
        """m = ||W + B A||: the layer then adds exactly the combined B A."""
        self.lora_magnitude_vector[name].copy_(self.weight_norm(name))

    def base_weight(self) -> torch.Tensor:
        """W as (out, in), whatever the storage layout."""
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    def lora_weight(self, name: str) -> torch.Tensor:
        return self.lora_B[name].weight @ self.lora_A[name].weight

    def weight_norm(self, name: str) -> torch.Tensor:
        """n = ||W + s B A|| over each output row, detached from the graph."""
        with torch.no_grad():
            return torch.linalg.norm(self.base_weight() + self.scaling[name] * self.lora_weight(name), dim=1)

    def adapter_forward(self, x, result, name, *args, **kwargs):
        A, B, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        x = x.to(A.weight.dtype)
        scale = self.lora_magnitude_vector[name] / self.weight_norm(name)
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            base = result if bias is None else result - bias
        else:
            x = dropout(x)
            base = F.linear(x, self.base_weight())
        dora = (scale - 1) * base + scale * B(A(x)) * self.scaling[name]
        return result + dora.to(result.dtype)

    def merge_adapter(self, name: str) -> None:
        if name in self.merged_adapters or not self.has_adapter(name):
            return
        with torch.no_grad():
            norm = self.weight_norm(name)
            factor = (self.lora_magnitude_vector[name] / norm).unsqueeze(1)
            self._set_base_weight(factor * (self.base_weight() + self.scaling[name] * self.lora_weight(name)))
        self.merge_norm[name] = norm
        self.merged_adapters.append(name)

    def unmerge_adapter(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        with torch.no_grad():
            factor = (self.lora_magnitude_vector[name] / self.merge_norm.pop(name)).unsqueeze(1)
            self._set_base_weight(self.base_weight() / factor - self.scaling[name] * self.lora_weight(name))
        self.merged_adapters.remove(name)

    def _set_base_weight(self, w_out_in: torch.Tensor) -> None:
        w = self.base_layer.weight
        w.data.copy_((w_out_in.T if self.fan_in_fan_out else w_out_in).to(w.dtype))


@METHODS.register("dora")
class Dora(Lora):
    init_reads_base = True  # the magnitude is the norm of the base weight
    name = "dora"
    config_class = DoraConfig
    paper = "https://arxiv.org/abs/2402.09353"
    formula = "sum over adapted layers of r * (in + out) + out"
    layer_types = ((nn.Linear, DoraLinear), (_conv1d(), DoraLinear))
    combine_as = "svd"  # its change is m (W + s B A) / ||W + s B A|| - W, not B A

    def combine_refusal(self, adapter_name: str, how: str) -> str | None:
        if how == "svd":
            return None
        return (f"adapter {adapter_name!r} is DoRA, whose change is not B A (the magnitude rescales W too): "
                "only how='svd' combines it")

    @classmethod
    def claims_peft_config(cls, body: dict) -> bool:
        return body.get("peft_type") == "LORA" and bool(body.get("use_dora"))

    def peft_config(self, cfg: DoraConfig) -> dict:
        body = super().peft_config(cfg)
        body["use_dora"] = True
        return body

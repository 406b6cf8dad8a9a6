"""LoRA-FA: LoRA with A frozen at its random init; only B trains, h = W x + s * B A x.

Freezing A means the backward pass needs only A x (r values per token) instead of x, which cuts activation
memory, and halves the optimizer state (Zhang et al. 2023, https://arxiv.org/abs/2308.03303). With A fixed, the
update B A lives in the row space of A; the paper's later version (and peft's `LoraFAOptimizer`) then projects
B's gradient so that B's step is the best rank-r approximation of the full fine-tuning step in that space:

    grad_B <- (1 / s^2) * grad_B (A A^T + 1e-8 I)^+          (lorafa_projection: true, the default)

That projection is done here in the backward pass, not in an optimizer, so any optimizer (our AdamW included)
applies it. Set lorafa_projection false for the first version's plain gradient. The adapter file is a plain
LoRA file (A included); it loads back as method 'lora'.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import METHODS
from .lora import Lora, LoraConfig, LoraLinear, _conv1d


@dataclasses.dataclass
class LoraFaConfig(LoraConfig):
    """LoRA's fields plus the choice of gradient projection."""

    method = "lora_fa"
    lorafa_projection: bool = True
    """Project B's gradient by (1 / s^2) (A A^T)^-1, as peft's LoraFAOptimizer; false: the plain gradient."""


class _ProjectGrad(torch.autograd.Function):
    """Identity on B's weight forward; backward returns grad_B (A A^T + delta I)^+ / s^2."""

    @staticmethod
    def forward(ctx, weight_b, weight_a, scaling):
        ctx.save_for_backward(weight_a)
        ctx.scaling = scaling
        return weight_b.view_as(weight_b)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        a = a.float()
        eye = torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
        inverse = torch.linalg.pinv(a @ a.T + 1e-8 * eye)
        return (grad.float() @ inverse / ctx.scaling**2).to(grad.dtype), None, None


class LoraFaLinear(LoraLinear):
    """LoRA on nn.Linear / Conv1D with lora_A frozen."""

    per_adapter_values = LoraLinear.per_adapter_values + ("projection",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.projection: dict[str, bool] = {}

    def update_layer(self, name: str, cfg: LoraFaConfig, module_name: str = "") -> None:
        super().update_layer(name, cfg, module_name)
        self.projection[name] = cfg.lorafa_projection

    def trains(self, rel_key: str) -> bool:
        return not rel_key.startswith("lora_A.")

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        A, B = self.lora_A[name], self.lora_B[name]
        weight_b = B.weight
        if self.projection[name] and torch.is_grad_enabled() and weight_b.requires_grad:
            weight_b = _ProjectGrad.apply(weight_b, A.weight, self.scaling[name])
        return F.linear(A(self.lora_dropout[name](x.to(A.weight.dtype))), weight_b) * self.scaling[name]


@METHODS.register("lora_fa")
class LoraFa(Lora):
    name = "lora_fa"
    config_class = LoraFaConfig
    paper = "https://arxiv.org/abs/2308.03303"
    formula = "sum over adapted layers of r * out  (A is frozen)"
    layer_types = ((nn.Linear, LoraFaLinear), (_conv1d(), LoraFaLinear))

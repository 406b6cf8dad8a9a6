"""Delta-LoRA: LoRA that also moves the frozen weight by the change of its low-rank product at every step,

    W_{t+1} = W_t + lambda * s * (B_{t+1} A_{t+1} - B_t A_t)     for t >= K (update_start_step),

so W learns without gradients or optimizer state of its own (Zi et al. 2023, https://arxiv.org/abs/2309.02411).
The LoRA branch has no dropout (the paper removes it; lora_dropout must stay 0).

How it is computed: the updates telescope, W_t = W_0 + lambda * s * (B_t A_t - B_K A_K) exactly, so instead of
writing into W after each step this layer keeps W frozen and adds that term in the forward (once K steps are done):

    h = W_0 x + (1 + lambda) * s * B A x - lambda * s * B_K A_K x

W's share must pass gradients to x but not to A, B (the paper's W gets no gradient), so the branch runs through A
and B with their gradients scaled by 1 / (1 + lambda): no extra matmul. The B_K A_K part is frozen.
Same outputs and gradients as the in-place update, but the base weights never change: disabling, deleting or
mixing adapters per row stays exact, and the result is the plain LoRA W_0 + (1 + lambda) s B A - lambda s B_K A_K.
`on_optimizer_step` counts steps and keeps the frozen copy (A_K, B_K) at step K. The count lives in the layers, not
in the trainable parameters a training checkpoint holds: with K > 0, a resumed run counts again from its resume.

Saving: the file is that plain LoRA (peft_type LORA, loads in peft and back here as method 'lora'): B' = (1 +
lambda) B at rank r when B_K A_K is zero (K = 0 with B initialised to zero), else rank 2r, B' A' = [(1 + lambda) B,
-lambda B_K] [A; A_K] with alpha doubled so s is unchanged.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterMismatch
from ..registry import METHODS
from .base import check
from .lora import FrozenFactors, Lora, LoraConfig, LoraLinear, _conv1d
from .weight_method import PEFT_PREFIX


@dataclasses.dataclass
class DeltaLoraConfig(LoraConfig):
    """LoRA's fields plus the two of Delta-LoRA."""

    method = "delta_lora"
    delta_lora_lambda: float = 0.5
    """lambda, the update ratio: the share of each step's change of s B A that W also receives."""
    update_start_step: int = 500
    """K: W moves only from optimizer step K on (early A, B are still mostly their random init)."""

    def validate(self) -> None:
        super().validate()
        check(self.delta_lora_lambda >= 0, "delta_lora_lambda", "delta_lora_lambda must be >= 0")
        check(isinstance(self.update_start_step, int) and self.update_start_step >= 0, "update_start_step",
              "update_start_step must be an integer >= 0")
        check(self.lora_dropout == 0, "lora_dropout",
              "Delta-LoRA has no dropout in the LoRA branch (W's update assumes it sees the same x as W)")

    def folds_to_double_rank(self) -> bool:
        """Whether the saved LoRA needs the B_K A_K half (it is zero only for K = 0 with B initialised to 0)."""
        return not (self.update_start_step == 0 and self.init_lora_weights is not False)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by `factor`."""

    @staticmethod
    def forward(ctx, weight, factor):
        ctx.factor = factor
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class DeltaLoraLinear(LoraLinear):
    """LoRA on nn.Linear / Conv1D plus the telescoped W update."""

    per_adapter_values = LoraLinear.per_adapter_values + ("delta_lambda", "start_step", "steps")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.delta_lambda: dict[str, float] = {}
        self.start_step: dict[str, int] = {}
        self.steps: dict[str, int] = {}
        self.delta_lora_start = nn.ModuleDict()  # A_K, B_K once step K is reached (absent while zero)

    def update_layer(self, name: str, cfg: DeltaLoraConfig, module_name: str = "") -> None:
        super().update_layer(name, cfg, module_name)
        self.delta_lambda[name], self.start_step[name] = cfg.delta_lora_lambda, cfg.update_start_step
        self.steps[name] = 0
        if cfg.update_start_step == 0:
            self.keep_start(name)

    def keep_start(self, name: str) -> None:
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        if bool(B.detach().any()) and bool(A.detach().any()):
            self.delta_lora_start[name] = FrozenFactors(A, B)

    def count_step(self, name: str) -> None:
        self.steps[name] += 1
        if self.steps[name] == self.start_step[name]:
            self.keep_start(name)

    def moving(self, name: str) -> bool:
        return self.steps[name] >= self.start_step[name]

    def adapter_forward(self, x, result, name, *args, **kwargs):
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        x = x.to(A.dtype)
        s, lam = self.scaling[name], self.delta_lambda[name]
        if not self.moving(name):
            return result + (s * F.linear(F.linear(x, A), B)).to(result.dtype)
        if torch.is_grad_enabled():
            A, B = _ScaleGrad.apply(A, 1 / (1 + lam)), _ScaleGrad.apply(B, 1 / (1 + lam))
        out = (1 + lam) * s * F.linear(F.linear(x, A), B)
        if name in self.delta_lora_start:
            start = self.delta_lora_start[name]
            out = out - lam * s * F.linear(F.linear(x, start.A), start.B)
        return result + out.to(result.dtype)

    def folded_factors(self, name: str, double: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(A', B') with s B' A' = the whole update: W_t - W_0 + s B A."""
        A, B = self.lora_A[name].weight.detach(), self.lora_B[name].weight.detach()
        lam = self.delta_lambda[name] if self.moving(name) else 0.0
        B_fold = (1 + lam) * B
        if not double:
            return A, B_fold
        start = self.delta_lora_start[name] if lam and name in self.delta_lora_start else None
        A_K = start.A if start is not None else torch.zeros_like(A)
        B_K = start.B if start is not None else torch.zeros_like(B)
        return torch.cat([A, A_K.to(A.dtype)], dim=0), torch.cat([B_fold, -lam * B_K.to(B.dtype)], dim=1)

    def delta_weight(self, name: str) -> torch.Tensor:
        A, B = self.folded_factors(name, double=name in self.delta_lora_start)
        delta = (B @ A) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def delete_adapter(self, adapter_name: str, keep_merged: bool = False) -> None:
        super().delete_adapter(adapter_name, keep_merged)
        if adapter_name in self.delta_lora_start:
            del self.delta_lora_start[adapter_name]


@METHODS.register("delta_lora")
class DeltaLora(Lora):
    init_reads_base = True  # it writes to the base weight as it trains
    name = "delta_lora"
    config_class = DeltaLoraConfig
    paper = "https://arxiv.org/abs/2309.02411"
    layer_types = ((nn.Linear, DeltaLoraLinear), (_conv1d(), DeltaLoraLinear))
    combine_as = ""  # its training moved W itself; its file is the plain LoRA it equals

    def combine_refusal(self, adapter_name: str, how: str) -> str | None:
        return (f"adapter {adapter_name!r} is Delta-LoRA: save it (the file is the plain LoRA it equals) and "
                "load that file, then combine")

    def on_optimizer_step(self, model, cfg, adapter_name) -> None:
        for _, layer in self.layers(model, adapter_name):
            layer.count_step(adapter_name)

    def peft_config(self, cfg: DeltaLoraConfig) -> dict:
        body = super().peft_config(cfg)
        if cfg.folds_to_double_rank():
            body.update(cfg.doubled_rank())
        return body

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        state = super().state_dict(model, adapter_name, cfg)
        double = cfg.folds_to_double_rank() if cfg is not None else True
        for mname, layer in self.layers(model, adapter_name):
            A, B = layer.folded_factors(adapter_name, double)
            state[PEFT_PREFIX + f"{mname}.lora_A.weight"] = A
            state[PEFT_PREFIX + f"{mname}.lora_B.weight"] = B
        return state

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        raise AdapterMismatch("a Delta-LoRA adapter is saved as the plain LoRA it equals; load that file with "
                              "load_adapter (it becomes a 'lora' adapter)")

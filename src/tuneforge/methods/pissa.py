"""PiSSA: LoRA initialised from the principal singular directions of W, with W replaced by the residual.

    W = U S V^T,   A = sqrt(S_r / s) V_r^T,   B = U_r sqrt(S_r / s),   W_res = W - s B A,   h = W_res x + s B A x

so a fresh adapter leaves the model unchanged, but training moves the top-r principal part of W instead of a
zero-initialised update, which converges faster (Meng et al. 2024, https://arxiv.org/abs/2404.02948).
init_lora_weights 'pissa' uses the exact SVD, 'pissa_niter_K' the randomized SVD with K subspace iterations
(`torch.svd_lowrank`, much faster on large layers), both as peft's init_lora_weights of the same names.

The adapter works against W_res, not W. Its file is peft's (peft_type LORA, init_lora_weights 'pissa'): loading
it into the original base model redoes the SVD (the exact SVD gives the same W_res) and then loads A, B; both tools
do this. `pissa_to_lora` turns the adapter into the plain rank-2r LoRA it equals on the original W,
B' A' = [B, -B0] [A; A0] (peft's path_initial_model_for_weight_conversion), and restores W, so the adapter can
then be saved, served and mixed like any LoRA. Deleting a PiSSA adapter restores W = W_res + s B0 A0.
Like peft, `disable_adapters` runs W_res (PiSSA owns part of the base weight).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Union

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import check
from .lora import FrozenFactors, Lora, LoraConfig, LoraLinear, _conv1d
from .weight_method import PEFT_PREFIX


@dataclasses.dataclass
class PissaConfig(LoraConfig):
    """LoRA's fields; init_lora_weights picks the SVD."""

    method = "pissa"
    init_lora_weights: Union[bool, str] = "pissa"
    """'pissa': exact SVD. 'pissa_niter_K': randomized SVD with K subspace iterations (faster, approximate)."""

    def validate(self) -> None:
        LoraConfig.validate(self.replace(init_lora_weights=True))
        check(
            self.init_lora_weights == "pissa" or bool(re.fullmatch(r"pissa_niter_\d+", str(self.init_lora_weights))),
            "init_lora_weights",
            f"init_lora_weights must be 'pissa' or 'pissa_niter_K' (K an integer), got {self.init_lora_weights!r}",
        )


class PissaLinear(LoraLinear):
    """LoRA on nn.Linear / Conv1D whose init takes the top-r SVD part out of the base weight."""

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.pissa_initial = nn.ModuleDict()  # A0, B0: what W_res lacks, for pissa_to_lora and delete

    def reset_parameters(self, name: str, init) -> None:
        w = self.base_layer.weight
        if not w.dtype.is_floating_point:
            raise ConfigError("PiSSA needs a float base weight: initialise it, then quantize the residual",
                              key="init_lora_weights")
        r, s = self.r[name], self.scaling[name]
        if r > min(self.in_features, self.out_features):
            raise ConfigError(f"r={r} exceeds the rank of a {self.out_features}x{self.in_features} weight", key="r")
        weight = (w.T if self.fan_in_fan_out else w).float()
        if init == "pissa":
            U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
            U, S, Vh = U[:, :r], S[:r], Vh[:r]
        else:  # seeded, so loading the file into the original model redraws the same residual
            with torch.random.fork_rng(devices=[w.device] if w.is_cuda else []):
                torch.manual_seed(0)
                U, S, V = torch.svd_lowrank(weight, r, niter=int(init.split("_niter_")[1]))
            Vh = V.T
        root = torch.sqrt(S / s)
        A, B = root[:, None] * Vh, U * root[None, :]
        self.lora_A[name].weight.data = A
        self.lora_B[name].weight.data = B
        residual = weight - s * B @ A
        w.data = (residual.T if self.fan_in_fan_out else residual).to(w.dtype)
        self.pissa_initial[name] = FrozenFactors(A, B)

    def delete_adapter(self, adapter_name: str, keep_merged: bool = False) -> None:
        keeps_update = keep_merged and adapter_name in self.merged_adapters
        initial, s = self.pissa_initial[adapter_name], self.scaling[adapter_name]
        super().delete_adapter(adapter_name, keep_merged)
        if not keeps_update:
            w = self.base_layer.weight
            restore = s * initial.B @ initial.A
            w.data += (restore.T if self.fan_in_fan_out else restore).to(w.dtype)
        del self.pissa_initial[adapter_name]


@METHODS.register("pissa")
class Pissa(Lora):
    init_reads_base = True  # the factors are the base weight's SVD
    name = "pissa"
    config_class = PissaConfig
    paper = "https://arxiv.org/abs/2404.02948"
    shares_base = False  # it owns part of the base weight (W_res), so other adapters cannot run beside it
    layer_types = ((nn.Linear, PissaLinear), (_conv1d(), PissaLinear))
    combine_as = ""  # it adapts the residual W_res, not W: combine its plain-LoRA form
    combines_as_lora = True

    def combine_refusal(self, adapter_name: str, how: str) -> str | None:
        return (f"adapter {adapter_name!r} is PiSSA: it adapts a residual base, not W; turn it into the LoRA it "
                f"equals first: tuneforge.methods.pissa.pissa_to_lora(model, {adapter_name!r})")

    def as_plain_lora(self, model: nn.Module, adapter_name: str) -> LoraConfig:
        return pissa_to_lora(model, adapter_name)

    @classmethod
    def claims_peft_config(cls, body: dict) -> bool:
        return (body.get("peft_type") == "LORA" and not body.get("use_dora")
                and str(body.get("init_lora_weights")).startswith("pissa"))


def pissa_to_lora(model: nn.Module, adapter_name: str = "default") -> LoraConfig:
    """Replace a PiSSA adapter by the equal plain LoRA on the original weights, in place; returns its config.

    With W = W_res + s B0 A0 restored, W_res + s B A = W + s (B A - B0 A0) = W + s [B, -B0] [A; A0]: a rank-2r
    LoRA whose alpha keeps s (peft's conversion). Outputs are unchanged; save it with `save_adapter`.
    """
    from .api import (active_adapters, add_adapter, adapter_state_dict, delete_adapter, list_adapters,
                      load_adapter_state_dict, make_method_config, set_active_adapters)

    cfg = list_adapters(model).get(adapter_name)
    if not isinstance(cfg, PissaConfig):
        raise ConfigError(f"adapter {adapter_name!r} is not a PiSSA adapter", key="adapter")
    state = adapter_state_dict(model, adapter_name)
    for mname, layer in Pissa().layers(model, adapter_name):
        initial = layer.pissa_initial[adapter_name]
        key = PEFT_PREFIX + mname
        A, B = state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"]
        state[f"{key}.lora_A.weight"] = torch.cat([A, initial.A.to(A.dtype)], dim=0)
        state[f"{key}.lora_B.weight"] = torch.cat([B, -initial.B.to(B.dtype)], dim=1)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LoraConfig)}
    lora_cfg = make_method_config("lora", {**fields, **cfg.doubled_rank(), "init_lora_weights": True})
    active = active_adapters(model)
    delete_adapter(model, adapter_name)
    add_adapter(model, lora_cfg, adapter_name)
    load_adapter_state_dict(model, state, adapter_name)
    set_active_adapters(model, active)
    return lora_cfg

"""LoRA: a frozen weight W plus a trainable low-rank update, h = W x + (alpha / r) * B A x.

Hu et al. 2021, https://arxiv.org/abs/2106.09685. rsLoRA scales by alpha / sqrt(r) instead (Kalajdzievski
2023, https://arxiv.org/abs/2312.03732). Init as peft: A kaiming-uniform(a=sqrt 5), B zero, so a fresh adapter
leaves the model unchanged; "gaussian" draws A ~ N(0, 1/r). Embeddings get A zero and B normal. Works on
nn.Linear, transformers' Conv1D (weights stored transposed), nn.Embedding and nn.Conv2d.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fused_linear import (FusableLinear, FusedLoraLinear, LoraAddmm, LowRankFactors, castable_factors,
                                   compute_factors, fusable_dtypes, fused_dropout_p, matmul_weight)
from ..registry import METHODS
from ._mixed_lora import mixed_lora_forward
from .base import AdapterLayer, MethodConfig, adapter_dtype, check
from .target_spec import TargetSpec
from .weight_method import WeightMethod


@dataclasses.dataclass
class LoraConfig(MethodConfig, TargetSpec):
    """LoRA hyper-parameters; field names and defaults are peft's so adapter_config.json matches."""

    method = "lora"
    r: int = 8
    """Rank of the update B A."""
    lora_alpha: float = 8
    """Scale numerator: the update is multiplied by lora_alpha / r (or / sqrt(r) with use_rslora)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input path only."""
    bias: str = "none"
    """Which biases train: none, all (every bias of the model), lora_only (biases of adapted layers)."""
    use_rslora: bool = False
    """Scale by lora_alpha / sqrt(r): keeps the update's size stable as r grows."""
    init_lora_weights: Union[bool, str] = True
    """True: kaiming-uniform A, zero B (identity at start). "gaussian": A ~ N(0, 1/r). False: B random too."""
    fan_in_fan_out: bool = False
    """Base weight stored as (in, out), as GPT-2's Conv1D; set automatically for Conv1D."""
    rank_pattern: dict = dataclasses.field(default_factory=dict)
    """Regex over module names -> a different r for those modules."""
    alpha_pattern: dict = dataclasses.field(default_factory=dict)
    """Regex over module names -> a different lora_alpha for those modules."""

    def validate(self) -> None:
        check(isinstance(self.r, int) and self.r > 0, "r", f"r must be a positive integer, got {self.r!r}")
        check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "lora_dropout must be in [0, 1)")
        check(self.bias in ("none", "all", "lora_only"), "bias", "bias must be none, all or lora_only")
        check(
            self.init_lora_weights in (True, False, "gaussian"),
            "init_lora_weights",
            "init_lora_weights must be true, false or 'gaussian' (PiSSA's init is the method 'pissa')",
        )

    def doubled_rank(self) -> dict:
        """r, lora_alpha and patterns of a rank-2r LoRA with the same scaling: the config of an adapter whose
        factors stack two rank-r pairs, B' A' = [B1, B2] [A1; A2] (PiSSA -> LoRA, Delta-LoRA files)."""
        alpha_factor = math.sqrt(2) if self.use_rslora else 2
        return dict(
            r=2 * self.r,
            lora_alpha=self.lora_alpha * alpha_factor,
            rank_pattern={k: 2 * v for k, v in self.rank_pattern.items()},
            alpha_pattern={k: v * alpha_factor for k, v in self.alpha_pattern.items()},
        )

    def rank_and_alpha(self, module_name: str) -> tuple[int, float]:
        r, alpha = self.r, self.lora_alpha
        for pattern, value in self.rank_pattern.items():
            if re.fullmatch(pattern, module_name) or module_name.endswith("." + pattern):
                r = value
        for pattern, value in self.alpha_pattern.items():
            if re.fullmatch(pattern, module_name) or module_name.endswith("." + pattern):
                alpha = value
        return r, alpha


class LoraLayer(AdapterLayer):
    """Shared LoRA bookkeeping: rank, scaling and dropout per adapter name."""

    per_adapter_values = ("r", "lora_alpha", "scaling")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict()

    def _set_common(self, name: str, cfg: LoraConfig, module_name: str) -> int:
        r, alpha = cfg.rank_and_alpha(module_name)
        self.r[name], self.lora_alpha[name] = r, alpha
        self.scaling[name] = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        self.lora_dropout[name] = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        if name not in self.active_adapters:
            self.active_adapters.append(name)
        return r

    def delete_adapter(self, adapter_name: str, keep_merged: bool = False) -> None:
        super().delete_adapter(adapter_name, keep_merged)
        if adapter_name in self.lora_dropout:
            del self.lora_dropout[adapter_name]

    # ---- what `combine` (methods/combine.py) asks a LoRA-family layer --------------------------------------
    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as stored: Linear (r, in), (out, r); Conv2d (r, in, k, k), (out, r, 1, 1)."""
        return self.lora_A[name].weight, self.lora_B[name].weight

    def combined_change(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The layer's real change from this adapter, given delta = s B A as a float32 matrix (plain LoRA: delta)."""
        return delta

    def after_combine(self, name: str) -> None:
        """Fix up adapter `name` once `combine` has written its factors (plain LoRA: nothing to do)."""

    def _move_to_base(self, *modules):
        """Onto the base weight's device, in `adapter_dtype` (fp32 on a half-precision base); lora_delta casts the
        input up and its output back down."""
        w = self.base_layer.weight
        for m in modules:
            m.to(device=w.device, dtype=adapter_dtype(w))


class FrozenFactors(nn.Module):
    """A frozen copy of one adapter's factors (PiSSA's initial A0, B0; Delta-LoRA's A_K, B_K). Non-persistent
    buffers: they follow the model across devices and dtypes but never train and never enter a state dict."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A.detach().clone(), persistent=False)
        self.register_buffer("B", B.detach().clone(), persistent=False)


class LoraLinear(LoraLayer, FusableLinear):
    """LoRA on nn.Linear and transformers' Conv1D."""

    adapter_attrs = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # Conv1D stores (in, out)
        w = base_layer.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        if isinstance(base_layer, nn.Linear):  # a quantised Linear's weight is packed; its features are not
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features

    def update_layer(self, name: str, cfg: LoraConfig, module_name: str = "") -> None:
        r = self._set_common(name, cfg, module_name)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False)
        self.reset_parameters(name, cfg.init_lora_weights)
        self._move_to_base(self.lora_A[name], self.lora_B[name])

    def reset_parameters(self, name: str, init) -> None:
        if init is False:
            return  # nn.Linear's own random init for A and B: a non-identity adapter (tests use this)
        if init == "gaussian":
            nn.init.normal_(self.lora_A[name].weight, std=1 / self.r[name])
        else:
            nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)

    def lora_delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        A, B = self.lora_A[name], self.lora_B[name]
        return B(A(self.lora_dropout[name](x.to(A.weight.dtype)))) * self.scaling[name]

    def forward(self, x: torch.Tensor, *args, **kwargs):
        """One active, unmerged adapter on a dense or 4-bit nn.Linear runs as one fused kernel (models/fused_linear.py);
        everything else (mixed batches, several adapters, Conv1D, autocast) takes the general path."""
        name = self._fused_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        A, B = compute_factors(x, self.lora_A[name].weight, self.lora_B[name].weight)
        p = fused_dropout_p(self.lora_dropout[name], x)
        x_lora = None if p is not None else self.lora_dropout[name](x)
        x_lora = None if x_lora is x else x_lora  # see FusedLoraLinear.forward
        return FusedLoraLinear.apply(x, x_lora, matmul_weight(base), base.bias, A, B, self.scaling[name], p or 0.0)

    def _fused_adapter(self, x: torch.Tensor, args, kwargs) -> str | None:
        cls, base = type(self), self.base_layer
        if (args or kwargs or self.disabled or self.row_adapters is not None or self.merged_adapters
                or len(self.active_adapters) != 1 or cls.lora_delta is not LoraLinear.lora_delta
                or cls.adapter_forward is not LoraLinear.adapter_forward or not isinstance(base, nn.Linear)
                or base._forward_hooks or base._forward_pre_hooks):
            return None
        name, state = self.active_adapters[0], getattr(base.weight, "quant_state", None)
        if state is not None:  # 4-bit base: its dequantised weight must be in the activations' dtype
            dense_ok = state.dtype == x.dtype and getattr(base, "compute_dtype", None) in (None, x.dtype)
        else:
            dense_ok = type(base) is nn.Linear and base.weight.dtype == x.dtype
        if not dense_ok or not self.has_adapter(name):
            return None
        extra = () if base.bias is None else (base.bias,)
        return name if fusable_dtypes(x, *extra) and castable_factors(
            x, self.lora_A[name].weight, self.lora_B[name].weight) else None

    def fused_factors(self, x: torch.Tensor) -> LowRankFactors | None:
        """The one active adapter's factors for the fused SwiGLU MLP (models/fused_mlp.py); plain LoRA only
        (variants built on this class keep their own forward)."""
        name = self._fused_adapter(x, (), {}) if type(self) is LoraLinear else None
        drop = fused_dropout_p(self.lora_dropout[name], x) if name is not None else None
        if drop is None:
            return None
        base = self.base_layer
        return LowRankFactors(matmul_weight(base), base.bias,
                              *compute_factors(x, self.lora_A[name].weight, self.lora_B[name].weight),
                              self.scaling[name], drop)

    def adapter_forward(self, x, result, name, *args, **kwargs):
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        if type(self).lora_delta is LoraLinear.lora_delta and fusable_dtypes(x, A, B, result):
            return LoraAddmm.apply(result, self.lora_dropout[name](x), A, B, self.scaling[name])
        return (result + self.lora_delta(x, name)).to(result.dtype)  # one rounding, in the wider dtype

    def mixed_adapters_forward(self, x, result, rows):
        """Inference on a mixed batch in three kernels (_mixed_lora.py); variants that change the maths do not
        take this path."""
        if type(self).lora_delta is not LoraLinear.lora_delta or type(self).adapter_forward is not LoraLinear.adapter_forward:
            return None
        return mixed_lora_forward(self, x, result, rows)

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta


class LoraEmbedding(LoraLayer):
    """LoRA on nn.Embedding: the lookup goes through A^T (num_embeddings x r), then B."""

    adapter_attrs = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as stored: (r, num_embeddings), (dim, r)."""
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def update_layer(self, name: str, cfg: LoraConfig, module_name: str = "") -> None:
        r = self._set_common(name, cfg, module_name)
        w = self.base_layer.weight
        A = torch.zeros(r, w.shape[0], device=w.device, dtype=adapter_dtype(w))
        B = torch.zeros(w.shape[1], r, device=w.device, dtype=adapter_dtype(w))
        if cfg.init_lora_weights is False:
            nn.init.normal_(A)
            nn.init.normal_(B)
        elif cfg.init_lora_weights == "gaussian":
            nn.init.normal_(A, std=1 / r)
        else:
            nn.init.normal_(B)
        self.lora_embedding_A[name] = nn.Parameter(A)
        self.lora_embedding_B[name] = nn.Parameter(B)

    def adapter_forward(self, x, result, name, *args, **kwargs):
        base = self.base_layer
        after_a = F.embedding(x, self.lora_embedding_A[name].T, base.padding_idx, base.max_norm,
                              base.norm_type, base.scale_grad_by_freq, base.sparse)
        return result + (after_a @ self.lora_embedding_B[name].T * self.scaling[name]).to(result.dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]


class LoraConv2d(LoraLayer):
    """LoRA on nn.Conv2d: A is a conv with the base kernel into r channels, B a 1x1 conv back out."""

    adapter_attrs = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Conv2d):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    def update_layer(self, name: str, cfg: LoraConfig, module_name: str = "") -> None:
        r = self._set_common(name, cfg, module_name)
        base = self.base_layer
        self.lora_A[name] = nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, base.padding,
                                      dilation=base.dilation, bias=False)
        self.lora_B[name] = nn.Conv2d(r, base.out_channels, 1, 1, bias=False)
        if cfg.init_lora_weights is not False:
            if cfg.init_lora_weights == "gaussian":
                nn.init.normal_(self.lora_A[name].weight, std=1 / r)
            else:
                nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[name].weight)
        self._move_to_base(self.lora_A[name], self.lora_B[name])

    def adapter_forward(self, x, result, name, *args, **kwargs):
        A, B = self.lora_A[name], self.lora_B[name]
        return result + (B(A(self.lora_dropout[name](x.to(A.weight.dtype)))) * self.scaling[name]).to(result.dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        if A.shape[2:] == (1, 1):
            delta = (B.squeeze(3).squeeze(2) @ A.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
        else:
            delta = F.conv2d(A.permute(1, 0, 2, 3), B).permute(1, 0, 2, 3)
        return delta * self.scaling[name]


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


@METHODS.register("lora", default=True)
class Lora(WeightMethod):
    init_reads_base = False  # factors drawn from shapes alone
    name = "lora"
    kind = "weight"
    mergeable = True
    combine_as = "factors"  # its variants too, unless they change the maths (DoRA, PiSSA, Delta-LoRA)
    config_class = LoraConfig
    peft_type = "LORA"
    paper = "https://arxiv.org/abs/2106.09685"
    formula = "sum over adapted layers of r * (in + out)  (embeddings: r * (num + dim))"
    layer_types = ((nn.Linear, LoraLinear), (_conv1d(), LoraLinear), (nn.Embedding, LoraEmbedding),
                   (nn.Conv2d, LoraConv2d))

    def extra_trainable(self, model, cfg, adapter_name):
        if cfg.bias == "all":
            return [(n, p) for n, p in model.named_parameters() if n.endswith("bias") and ".lora_" not in n and ".original_module." not in n]
        if cfg.bias == "lora_only":
            return [
                (f"{m}.base_layer.bias", layer.base_layer.bias)
                for m, layer in self.layers(model, adapter_name)
                if getattr(layer.base_layer, "bias", None) is not None
            ]
        return []

    @classmethod
    def claims_peft_config(cls, body: dict) -> bool:
        """Plain LoRA files. Variants that write plain LoRA files (rsLoRA, LoRA+, LoRA-FA, Delta-LoRA) load back
        as LoRA, so only this class claims them; DoRA and PiSSA files are claimed by their own methods."""
        init = str(body.get("init_lora_weights", True))
        return (cls is Lora and body.get("peft_type") == "LORA" and not body.get("use_dora")
                and not init.startswith("pissa"))

    def peft_config(self, cfg: LoraConfig) -> dict:
        """LoraConfig's fields only, so a variant's extra fields (loraplus_lr_ratio, ...) never reach peft."""
        body = super().peft_config(cfg)
        lora_fields = {f.name for f in dataclasses.fields(LoraConfig)} | {"peft_type"}
        body = {k: v for k, v in body.items() if k in lora_fields}
        body.update(use_dora=False, lora_bias=False)
        return body

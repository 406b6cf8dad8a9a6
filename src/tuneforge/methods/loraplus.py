"""LoRA+: LoRA whose B matrices learn faster than A, eta_B = loraplus_lr_ratio * eta_A.

With one learning rate for both factors, feature learning in wide models is inefficient; a larger rate for B
(ratio ~16) fixes it at no cost (Hayou et al. 2024, https://arxiv.org/abs/2402.12354). The model and the
adapter file are plain LoRA's (the file loads back as method 'lora'); only the AdamW groups differ, as in peft's
`create_loraplus_optimizer`:

    A (and other matrices)          lr,                         weight_decay
    B                               lr * loraplus_lr_ratio,     weight_decay
    1-D parameters (biases)         lr * loraplus_lr_ratio,     0
    LoRA on embeddings (A and B)    loraplus_lr_embedding,      weight_decay
"""
from __future__ import annotations

import dataclasses

from ..registry import METHODS
from .base import check
from .lora import Lora, LoraConfig, LoraEmbedding


@dataclasses.dataclass
class LoraPlusConfig(LoraConfig):
    """LoRA's fields plus the two learning-rate settings of LoRA+."""

    method = "loraplus"
    loraplus_lr_ratio: float = 16.0
    """eta_B / eta_A: B's learning rate is the run's lr times this (the paper recommends ~16, >= 1)."""
    loraplus_lr_embedding: float = 1e-6
    """Learning rate of LoRA factors on embedding layers (peft's default)."""

    def validate(self) -> None:
        super().validate()
        check(self.loraplus_lr_ratio > 0, "loraplus_lr_ratio", "loraplus_lr_ratio must be positive")
        check(self.loraplus_lr_embedding >= 0, "loraplus_lr_embedding", "loraplus_lr_embedding must be >= 0")


@METHODS.register("loraplus")
class LoraPlus(Lora):
    name = "loraplus"
    config_class = LoraPlusConfig
    paper = "https://arxiv.org/abs/2402.12354"

    def optimizer_groups(self, model, cfg: LoraPlusConfig, adapter_name, params, lr, weight_decay):
        embedding, fast = set(), set()
        for _, layer in self.layers(model, adapter_name):
            if isinstance(layer, LoraEmbedding):
                embedding.update(id(p) for _, p in layer.adapter_parameters(adapter_name))
            else:
                fast.add(id(layer.lora_B[adapter_name].weight))
        groups = {"A": [], "embedding": [], "B": []}
        for _, p in params:  # as peft: B and every 1-D tensor take the fast rate (optimizer_groups then splits decay)
            groups["embedding" if id(p) in embedding else "B" if id(p) in fast or p.ndim < 2 else "A"].append(p)
        rates = {"A": lr, "embedding": cfg.loraplus_lr_embedding, "B": lr * cfg.loraplus_lr_ratio}
        return [{"params": ps, "lr": rates[k], "weight_decay": weight_decay} for k, ps in groups.items() if ps]

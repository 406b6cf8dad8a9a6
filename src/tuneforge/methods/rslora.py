"""rsLoRA: LoRA scaled by alpha / sqrt(r) instead of alpha / r, h = W x + (alpha / sqrt(r)) * B A x.

With alpha / r the update's size shrinks as r grows, so large ranks learn no better than small ones; alpha / sqrt(r)
keeps it rank-stable (Kalajdzievski 2023, https://arxiv.org/abs/2312.03732). This is LoRA with `use_rslora`
on by default, listed under its own name; the adapter file is a plain peft LoRA file (use_rslora true) and loads
back as method 'lora'.
"""
from __future__ import annotations

import dataclasses

from ..registry import METHODS
from .lora import Lora, LoraConfig


@dataclasses.dataclass
class RsLoraConfig(LoraConfig):
    """LoRA's fields, with use_rslora defaulting to true."""

    method = "rslora"
    use_rslora: bool = True
    """Scale by lora_alpha / sqrt(r) (the point of this method; false gives plain LoRA)."""


@METHODS.register("rslora")
class RsLora(Lora):
    name = "rslora"
    config_class = RsLoraConfig
    paper = "https://arxiv.org/abs/2312.03732"

"""Which trainable parameters AdamW decays: one rule for the default groups, LoRA+'s groups and the loop.

The rule is transformers' Trainer (`get_decay_parameter_names`), which peft's optimizers follow too: no decay for
biases and norm weights (LayerNorm modules, and names with bias / layernorm / rmsnorm / norm / _norm), decay for
the rest. Decay pulls a weight towards zero; a norm gain decayed to zero switches a channel off. Other 1-D
tensors (IA3 and VeRA scales, DoRA magnitudes) are decayed, as they are in a Trainer run of peft.
"""
from __future__ import annotations

import re

from torch import nn

_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def no_decay_names(model: nn.Module) -> set[str]:
    """Names (as model.named_parameters gives them) of the parameters that get weight_decay 0."""
    in_layer_norm = {f"{m}.{p}" if m else p for m, module in model.named_modules() if isinstance(module, nn.LayerNorm)
                     for p, _ in module.named_parameters(recurse=False)}
    return {n for n, _ in model.named_parameters() if n in in_layer_norm or _NO_DECAY.search(n.lower())}


def split_by_decay(group: dict, names: dict[int, str], no_decay: set[str]) -> list[dict]:
    """An AdamW group as one or two: its decayed parameters keep its settings, the others get weight_decay 0."""
    params = [p for p in group["params"] if p.requires_grad]
    extra = {k: v for k, v in group.items() if k != "params"}
    keep = [p for p in params if names.get(id(p)) in no_decay]
    decay = [p for p in params if names.get(id(p)) not in no_decay]
    out = [{**extra, "params": decay}] if decay else []
    return out + ([{**extra, "weight_decay": 0.0, "params": keep}] if keep else [])

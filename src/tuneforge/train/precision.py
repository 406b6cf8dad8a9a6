"""fp32 master weights for the base weights a method trains on a bf16 model.

`dtype: auto` loads a bf16 model on a GPU. Adapters already get fp32 parameters there (methods.base.adapter_dtype),
but methods that train the base's own weights (full, last_k, head_only, bitfit, selective, ...) would train bf16
parameters in place, and bf16 keeps 8 bits of mantissa: an AdamW update smaller than about 1/256 of a weight
rounds away (a 2e-5 learning rate moves almost nothing). The usual cure (mixed precision with fp32 master weights,
as transformers' Trainer does with an fp32 model and bf16 autocast) is applied to just the parameters that train:
they become fp32 for the run while the frozen rest stays bf16, and the forward runs under bf16 autocast so the
mixed dtypes meet in bf16 matmuls (in PPO's own loop too). After training they return to the model's dtype for
saving and inference. fp16 models are left alone (fp16 autocast needs loss scaling, which the loop does not do).
"""
from __future__ import annotations

import torch
from torch import nn


def fp32_master_weights(model: nn.Module) -> list[tuple[nn.Parameter, torch.dtype]]:
    """Cast the trainable bf16 parameters to fp32 in place (tied ones once); returns what to restore."""
    changed = []
    for param in model.parameters():  # parameters() yields a tied parameter once
        if param.requires_grad and param.dtype == torch.bfloat16:
            changed.append((param, param.dtype))
            param.data = param.data.float()
    return changed


def restore_dtypes(changed: list[tuple[nn.Parameter, torch.dtype]]) -> None:
    """Back to the model's dtype (rounding the trained fp32 values once, at the end)."""
    for param, dtype in changed:
        param.data = param.data.to(dtype)

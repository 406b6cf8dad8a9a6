"""AdamW with 8-bit optimizer states (and its paged variant), from bitsandbytes.

8-bit Adam (Dettmers et al. 2021, https://arxiv.org/abs/2110.02861) keeps both moment estimates in 8 bits with
blockwise dynamic quantisation, cutting optimizer memory from 8 to about 2 bytes per trained parameter; tensors
under 4,096 values keep 32-bit states (bitsandbytes' min_8bit_size). The paged variant puts the states in CUDA
unified memory that is evicted to CPU RAM under GPU memory pressure instead of failing (QLoRA's paged
optimizers); on a CPU there is nothing to page and bitsandbytes runs the ordinary 8-bit update.
"""
from __future__ import annotations

from ..errors import ConfigError
from .layers import require_bitsandbytes

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")


def build_8bit_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float):
    """bitsandbytes' AdamW8bit or PagedAdamW8bit over `groups` (the same param groups torch's AdamW gets)."""
    if name not in OPTIMIZERS[1:]:
        raise ConfigError(f"unknown 8-bit optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}", key="optimizer")
    bnb = require_bitsandbytes()
    cls = bnb.optim.AdamW8bit if name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    return cls(groups, lr=lr, weight_decay=weight_decay)

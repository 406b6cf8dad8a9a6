"""A model's repeated blocks (its transformer layers), found by structure so any architecture works: what
torch.compile compiles one by one (train/compile.py) and what norm recomputation patches (norm_recompute.py)."""
from __future__ import annotations

from torch import nn


def repeated_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The largest ModuleList whose members all share one class (the transformer layers), or None."""
    best = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best = module
    return best

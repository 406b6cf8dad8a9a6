"""torch.compile of a model's repeated blocks, each in place.

Why the blocks and not the whole model: every decoder layer has the same code and shapes, so one compiled graph
serves all of them (compile time does not grow with depth), the module tree and parameter names stay as they
are (adapters, checkpoints and state dicts do not notice), and the code around the blocks (the SFT task's
one-pass head loss, per-batch method contexts) keeps running eagerly. Inductor then fuses each block's
elementwise work (norms, rotary embedding, activation, residual adds) into a few kernels and, in backward,
recomputes cheap elementwise results instead of keeping them (its min-cut partitioner).
"""
from __future__ import annotations

import torch
from torch import nn


def repeated_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The largest ModuleList whose members all share one class (the transformer layers), or None."""
    best = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best):
                best = module
    return best


def compile_blocks(model: nn.Module, **options) -> int:
    """Compile each repeated block in place (`nn.Module.compile`); returns how many were compiled (0 when the
    model has no repeated blocks, which then runs eagerly). `options` go to torch.compile."""
    blocks = repeated_blocks(model)
    if blocks is None:
        return 0
    for block in blocks:
        block.compile(**options)
    return len(blocks)

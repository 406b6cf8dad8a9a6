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

from ..models.blocks import repeated_blocks


def compile_blocks(model: nn.Module, **options) -> int:
    """Compile each repeated block in place (`nn.Module.compile`); returns how many were compiled (0 when the
    model has no repeated blocks, which then runs eagerly). `options` go to torch.compile."""
    blocks = repeated_blocks(model)
    if blocks is None:
        return 0
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def attention_for_compile(model: nn.Module) -> str | None:
    """On CUDA, pick an attention kernel inductor compiles; returns the one switched to, or None (no change).

    Compiled blocks running sdpa failed on an H200 inside inductor's code for the memory-efficient kernel's
    backward (`expected Tensor() for op: aten._scaled_dot_product_efficient_attention_backward`, torch 2.11,
    docs/performance.md): that kernel is what sdpa takes for a masked row. The blocks go instead to
    flash_attention_2 when flash-attn is installed and the weights are half precision (its varlen kernel also
    takes packed rows without a mask), else to flex_attention, which is written for torch.compile (its block
    masks carry padding and packed-example boundaries without an L x L tensor). An implementation the user set
    other than sdpa is kept. Not run in this repository's CI (no GPU): tests/gpu/test_scale_paths.py checks it on
    a GPU machine."""
    import importlib.util

    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    if config is None or param is None or param.device.type != "cuda" or not hasattr(model, "set_attn_implementation"):
        return None
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "tuneforge_packed_sdpa"):
        return None
    half = getattr(model, "dtype", param.dtype) in (torch.bfloat16, torch.float16)
    choice = "flash_attention_2" if half and importlib.util.find_spec("flash_attn") is not None else "flex_attention"
    if choice == "flex_attention" and not getattr(model, "_supports_flex_attn", False):
        return None
    model.set_attn_implementation(choice)
    return choice

"""Selective activation checkpointing: keep what matmuls and attention produced, recompute the rest.

Full checkpointing keeps only each block's input and runs the whole block forward again during backward: every
GEMM twice, ~30% more work. But most of what a transformer block keeps for backward is the output of cheap
elementwise work (norms, rotary embedding, SiLU, the gate product, dtype casts), which costs memory without
costing much time to redo. With PyTorch's selective checkpointing (`create_selective_checkpoint_contexts`) the
outputs of matmuls and attention kernels are kept (MUST_SAVE) and everything else is recomputed from them in
backward (PREFER_RECOMPUTE): no GEMM runs twice, and a Llama block keeps about 6k instead of 10k floats per
token. Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198) introduced the idea for attention.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_aten = torch.ops.aten
_KEPT_NAMES = (
    "mm", "addmm", "bmm", "baddbmm",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward", "_efficient_attention_forward",
)
KEPT_OPS = frozenset(getattr(_aten, name).default for name in _KEPT_NAMES if hasattr(_aten, name))


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_context():
    """The `context_fn` for torch.utils.checkpoint.checkpoint (non-reentrant) that applies the policy above."""
    return create_selective_checkpoint_contexts(_policy)


def checkpoint_kwargs(mode) -> dict:
    """Keyword arguments for transformers' gradient_checkpointing_enable: mode True recomputes whole blocks,
    "elementwise" only the elementwise work between matmuls (the policy above)."""
    kwargs = {"use_reentrant": False}
    if mode == "elementwise":
        kwargs["context_fn"] = selective_context
    return kwargs

"""Activation checkpointing for the length of a run: whole blocks, or only their element-wise parts
(selective_checkpoint.py), on every repeated block or only the first N of them."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from ..models.blocks import repeated_blocks
from .selective_checkpoint import checkpoint_kwargs


@contextmanager
def activation_checkpointing(model: nn.Module, enabled, layers: int | None = None):
    """Activation checkpointing (non-reentrant, so frozen inputs need no requires_grad trick) for the run;
    transformers 5.x names it activation_checkpointing_*, older versions gradient_checkpointing_*. `layers`: only
    the first this many blocks recompute (Megatron's "block" method), the rest keep their activations."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    new_api = hasattr(model, "activation_checkpointing_enable")
    kwargs = checkpoint_kwargs(enabled)  # True: whole blocks; "elementwise": see selective_checkpoint.py
    had_input_grads = bool(getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"))
    if enabled and new_api:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif enabled and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if enabled and not had_input_grads and hasattr(model, "disable_input_require_grads"):
        # transformers also makes the embeddings' output require grad, which only reentrant checkpointing needs:
        # it would make the first block compute an input gradient nobody reads.
        model.disable_input_require_grads()
    if enabled and layers is not None:
        limit_checkpointed_blocks(model, layers)
    if enabled and config is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if enabled:
            disable = "activation_checkpointing_disable" if new_api else "gradient_checkpointing_disable"
            getattr(model, disable, lambda: None)()
            if config is not None:
                config.use_cache = use_cache


def limit_checkpointed_blocks(model: nn.Module, layers: int) -> int:
    """Leave checkpointing on for the first `layers` repeated blocks only; returns how many recompute now. Every
    block's activations are alive together at the end of the forward pass, so each block left out adds the same
    memory back and saves the same recompute time, whichever it is."""
    blocks = repeated_blocks(model)
    if blocks is None:
        return 0
    flagged = [b for b in blocks if hasattr(b, "gradient_checkpointing")]
    for i, block in enumerate(flagged):
        block.gradient_checkpointing = block.gradient_checkpointing and i < layers
    return sum(bool(b.gradient_checkpointing) for b in flagged)

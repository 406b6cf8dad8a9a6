"""NEFTune (Jain et al. 2023, https://arxiv.org/abs/2310.05914): uniform noise on the input embeddings while
training, the same hook as transformers' `neftune_post_forward_hook`:

    out + U(-s, s) elementwise,   s = alpha / sqrt(L * d)

with L the (padded) sequence length of the batch and d the embedding width. Off in eval mode, so evaluation and
generation see clean embeddings."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import TuneforgeError


def noise_scale(alpha: float, length: int, dim: int) -> float:
    """The bound s of the uniform noise for one batch."""
    return alpha / math.sqrt(length * dim)


def _hook(alpha: float):
    def add_noise(module: nn.Module, args, output: torch.Tensor):
        if not module.training or output.dim() != 3:
            return output
        s = noise_scale(alpha, output.size(1), output.size(2))
        return output + torch.empty_like(output).uniform_(-s, s)

    return add_noise


@contextmanager
def neftune(model: nn.Module, alpha: float | None):
    """While inside, the model's input embeddings get NEFTune noise in training mode (alpha None: nothing)."""
    if not alpha:
        yield
        return
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if get is not None else None
    if embeddings is None:
        raise TuneforgeError(f"neftune_noise_alpha: {type(model).__name__} has no input embeddings to add noise to")
    handle = embeddings.register_forward_hook(_hook(alpha))
    try:
        yield
    finally:
        handle.remove()

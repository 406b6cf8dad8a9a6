"""One checked copy of saved tensors into a model's parameters, for every loader of adapter or checkpoint state.

A shape that does not fit means the file was made for another base model or other settings; a dtype of
another kind (integers into float weights) means it is not a weight file at all. Either is an error naming
the key, before anything is copied into that parameter, instead of torch's broadcast error or a silent cast.
"""
from __future__ import annotations

import torch

from ..errors import AdapterMismatch

WRONG_BASE = "the adapter was saved for another base model"


def copy_checked(target: torch.Tensor, tensor: torch.Tensor, key: str, *, hint: str = WRONG_BASE,
                 error: type[Exception] = AdapterMismatch) -> None:
    """target <- tensor (cast to target's dtype, no autograd), when shape and kind of dtype match; else `error`
    naming `key`, the two shapes (or dtypes) and `hint` (what probably happened)."""
    if tuple(target.shape) != tuple(tensor.shape):
        raise error(f"{key}: the file has shape {tuple(tensor.shape)}, this model needs {tuple(target.shape)}; "
                    f"{hint}")
    if tensor.dtype.is_floating_point != target.dtype.is_floating_point or tensor.is_complex() != target.is_complex():
        raise error(f"{key}: the file holds {tensor.dtype}, this model needs {target.dtype}; {hint}")
    with torch.no_grad():
        target.copy_(tensor.to(target.dtype))

"""One way to turn ragged token rows into a rectangle: every collator, the sampler and the server use it.

Training batches pad on the right (positions stay 0..n-1 and a classifier finds the last real token before the
first pad); generation pads on the left, so every row's next token sits in the same column.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch


def pad(rows: Sequence[Sequence[int]], pad_id: int, side: Literal["right", "left"] = "right"
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (len(rows), longest row) long tensors: the rows on `side`'s far end filled
    with `pad_id`, the mask 1 on real tokens. `pad_id` may be any fill value (-100 for labels, 0 for types)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not rows:
        raise ValueError("cannot pad an empty batch")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        if n == 0:
            continue
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, cols] = torch.as_tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask

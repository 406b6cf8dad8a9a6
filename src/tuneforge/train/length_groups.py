"""Length-grouped data order (`train.group_by_length: W`): fewer padding positions per micro-batch.

A micro-batch is padded to its longest row, so a random slice of short and long sentences wastes compute: on
SST-2 (batch 32, up to 64 tokens) the padded batches hold 2.0x the real tokens, on STS-B pairs (batch 16) 2.3x.
The grouped order keeps the epoch random and cuts that waste:

    1. the epoch's permutation (the same draw as without grouping),
    2. cut into windows of W micro-batches; each window sorted by example length, longest first,
    3. cut into micro-batches again, and the full micro-batches put in a random order (one more draw of the same
       generator); a last, partial micro-batch stays at the end, so every step's slice boundaries are unchanged.

Every example is still seen once per epoch, each micro-batch holds examples drawn from one random window of
W x batch rows, and the order is a function of (seed, epoch, lengths), so an interrupted run resumes exactly.
W = 8 gives SST-2 1.15x and STS-B 1.29x; a larger W pads less but makes micro-batches more alike (HF's
`group_by_length` uses 50).
"""
from __future__ import annotations

import torch


def grouped_order(perm: list[int], lengths: list[int], batch: int, window: int,
                  generator: torch.Generator) -> list[int]:
    """`perm` reordered so that each run of `batch` consecutive entries holds examples of like length (see the
    module docstring). `lengths[i]` is example i's cost in tokens; `window` micro-batches are sorted together."""
    if batch < 1 or window < 1:
        raise ValueError("batch and window must be at least 1")
    span = batch * window
    batches: list[list[int]] = []
    for start in range(0, len(perm), span):
        ordered = sorted(perm[start:start + span], key=lambda i: -lengths[i])  # stable: ties keep the draw
        batches += [ordered[s:s + batch] for s in range(0, len(ordered), batch)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [i for b in shuffled + tail for i in b]

"""Pack short examples into rows of at most max_length tokens.

Why: chat examples vary from 30 to 500 tokens; padding each batch to its longest row wastes most of the
compute. Packing fills rows instead, and stays exact because every example keeps its own positions
(`position_ids` restart at 0) and `collate_causal` gives packed rows a block-diagonal causal mask, so no token
sees another example. Rows are filled best-fit-decreasing (longest example first, into the fullest row it still
fits), which leaves rows within a few percent of full.
"""
from __future__ import annotations

import bisect

from .formatting import IGNORE


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Rows `{"input_ids", "labels", "position_ids", "seq_lens"}`, each at most max_length tokens long.

    The first label of every example is set to -100: in a row the loss shift makes the previous example's
    last position predict it, and it must not be trained (the unpacked example has no such prediction)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []  # example indices per row
    free: list[tuple[int, int]] = []  # (space left, row index), sorted: best fit = smallest space that fits
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than max_length={max_length}; truncate first")
        if n == 0:
            continue
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, row = free.pop(k)
        else:
            space, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, row))
    return [_join([examples[i] for i in sorted(members)]) for members in rows]


def _join(parts: list[dict]) -> dict:
    ids, labels, positions, lens = [], [], [], []
    for ex in parts:
        n = len(ex["input_ids"])
        ids += ex["input_ids"]
        labels += [IGNORE] + list(ex["labels"][1:])
        positions += list(range(n))
        lens.append(n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lens": lens}


def packing_efficiency(rows: list[dict], max_length: int) -> float:
    """Share of the packed rows' max_length slots that hold real tokens (1.0 = no padding at all)."""
    if not rows:
        return 0.0
    return sum(len(r["input_ids"]) for r in rows) / (len(rows) * max_length)

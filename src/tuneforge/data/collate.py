"""Batch examples into tensors for a causal LM.

Conventions the training loop relies on:
- `labels` are NOT shifted: the loss is cross-entropy of logits[:, :-1] against labels[:, 1:], with -100
  ignored (padding, prompts, and the first token of each example are -100).
- Unpacked batches: right padding, 2-D `attention_mask` (1 = token, 0 = padding), `position_ids` 0..n-1.
- Packed rows (examples carrying `seq_lens`, from pack_examples): a 4-D additive float mask of shape
  (B, 1, L, L), 0 where query i may attend to key j (same example, j <= i) and the dtype's minimum elsewhere.
  transformers passes a 4-D mask through unchanged to its eager and sdpa attention, which both add it to the
  scores. A padding position attends only to itself, so no softmax row is all -inf (which would give NaN).
  Flash-attention kernels do not take a 4-D mask; cast it to the model's dtype for half-precision sdpa.
"""
from __future__ import annotations

import torch

from .formatting import IGNORE


def collate_causal(examples: list[dict], pad_token_id: int, *, mask_dtype: torch.dtype = torch.float32) -> dict:
    """`input_ids`, `labels`, `position_ids` (B, L) and `attention_mask` (B, L) or, for packed rows,
    (B, 1, L, L) additive in mask_dtype. Extra keys of the examples are ignored."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    packed = any("seq_lens" in ex for ex in examples)
    width = max(len(ex["input_ids"]) for ex in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    if packed:
        allowed = torch.zeros((batch, width, width), dtype=torch.bool)
    else:
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        input_ids[b, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.tensor(ex["labels"], dtype=torch.long)
        if not packed:
            position_ids[b, :n] = torch.arange(n)
            attention_mask[b, :n] = 1
            continue
        start = 0
        for length in ex.get("seq_lens", [n]):
            position_ids[b, start : start + length] = torch.arange(length)
            allowed[b, start : start + length, start : start + length] = True
            start += length
        if start != n:
            raise ValueError(f"row {b}: seq_lens add up to {start}, but the row has {n} tokens")
        allowed[b, range(n, width), range(n, width)] = True  # padding sees only itself
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if packed:
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        allowed &= causal
        mask = torch.zeros((batch, 1, width, width), dtype=mask_dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(mask_dtype).min)
        out["attention_mask"] = mask
    else:
        out["attention_mask"] = attention_mask
    return out

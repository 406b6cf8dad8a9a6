"""Batch examples into tensors for a causal LM.

Conventions the training loop relies on:
- `labels` are NOT shifted: the loss is cross-entropy of logits[:, :-1] against labels[:, 1:], with -100
  ignored (padding, prompts, and the first token of each example are -100).
- Unpacked batches: right padding, 2-D `attention_mask` (1 = token, 0 = padding), `position_ids` 0..n-1.
- Packed rows (examples carrying `seq_lens`, from pack_examples): no attention mask at all. `position_ids`
  restart at 0 for each example (padding at a row's end gets 0s) and `seq_lens` (B, max examples, 0-padded)
  holds the example lengths; the attention backends read those (models/packed_attention.py: per-example
  kernels on CPU, flash-attn's varlen kernel on CUDA, transformers' packed-sequence masks otherwise). A dense
  (B, 1, L, L) mask would cost O(L^2) memory per row (4 GiB in fp32 for one 32k-token row) and rule out
  flash-attention; models/packed_attention.block_causal_mask builds one only for a model that needs it.
"""
from __future__ import annotations

import torch

from .formatting import IGNORE
from .padding import pad


def collate_causal(examples: list[dict], pad_token_id: int) -> dict:
    """`input_ids`, `labels`, `position_ids` (B, L); unpacked rows also get `attention_mask` (B, L), packed rows
    (any example with `seq_lens`) get `seq_lens` (B, max examples) instead. Extra keys are ignored."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    packed = any("seq_lens" in ex for ex in examples)
    input_ids, attention_mask = pad([ex["input_ids"] for ex in examples], pad_token_id)
    labels, _ = pad([ex["labels"] for ex in examples], IGNORE)
    position_ids = torch.zeros_like(input_ids)
    rows = []
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        lens = list(ex.get("seq_lens", [n])) if packed else [n]
        if sum(lens) != n or any(length < 1 for length in lens):
            raise ValueError(f"row {b}: seq_lens {lens} do not split the row's {n} tokens")
        start = 0
        for length in lens:
            position_ids[b, start : start + length] = torch.arange(length)
            start += length
        rows.append(lens)
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if packed:
        out["seq_lens"] = pad(rows, 0)[0]
    else:
        out["attention_mask"] = attention_mask
    return out

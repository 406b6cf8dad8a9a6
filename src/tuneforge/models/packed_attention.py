"""Attention over packed rows one example at a time, instead of one masked (L x L) attention per row.

A packed row holds several examples, each attending causally to itself only. Given the block-diagonal mask, sdpa
computes every (query, key) pair of the row and masks most of them away: for a 256-token row of ~110-token
examples that is 65k pairs for ~13k useful ones, and a masked call cannot use the kernels' causal shortcut.
Run per example with `is_causal=True` instead (what flash-attention's varlen kernels do on GPUs, written here
with plain sdpa calls): the same softmax over the same keys, so the result equals the masked attention up to the
order of float sums, at about a fifth of the work. Padding at the end of a row gets zeros (its labels are
ignored, and nothing attends to it).

The function registers with transformers' AttentionInterface under PACKED_SDPA and is a superset of "sdpa": it
takes the packed path only when the call carries `packed_seq_lens` (a (rows, max examples) tensor of example
lengths, 0-padded) and otherwise hands everything to transformers' sdpa. Callers keep passing the exact 4-D
block mask as well, so a model that does not forward the keyword still attends correctly, only slower; a block
being compiled by torch.compile also takes the masked call, because a loop over data-dependent example lengths
would break its graph.

CPU only: on a GPU the loop's many small kernel launches (and the host sync that reads the lengths) cost more
than the masked pairs, and a GPU runs the whole masked row in one memory-efficient kernel. Measured on an H200
(benchmarks/lora_sft.py, SmolLM2-135M, 4 x 256 tokens): the per-example path made our step 2x slower than
peft's in fp32 and 6x in bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_SDPA = "tuneforge_packed_sdpa"


def packed_seq_lens(seq_lens: list[list[int]]) -> torch.Tensor:
    """Per-row example lengths as a (rows, max examples) long tensor, 0-padded (a tensor, so a compiled block
    sees one symbolic input rather than a new constant per batch)."""
    width = max(len(lens) for lens in seq_lens)
    return torch.tensor([list(lens) + [0] * (width - len(lens)) for lens in seq_lens], dtype=torch.long)


def _per_example(query, key, value, scaling, seq_lens: torch.Tensor) -> torch.Tensor:
    rows, heads, length, dim = query.shape
    gqa = key.shape[1] != heads
    parts = []
    for b, lens in enumerate(seq_lens.tolist()):
        sizes = [n for n in lens if n > 0]
        pad = length - sum(sizes)
        chunks = zip(*(t[b : b + 1].split(sizes + ([pad] if pad else []), dim=2) for t in (query, key, value)))
        for (q, k, v), _ in zip(chunks, sizes):
            parts.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa))
        if pad:
            parts.append(query.new_zeros((1, heads, pad, dim)))
    out = torch.cat(parts, dim=2).view(heads, rows, length, dim)
    return out.permute(1, 2, 0, 3)  # (rows, length, heads, dim), as transformers' attention functions return


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, packed_seq_lens: torch.Tensor | None = None, **kwargs):
    """transformers attention-function signature; see the module docstring."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    usable = (packed_seq_lens is not None and query.device.type == "cpu" and not torch.compiler.is_compiling()
              and dropout == 0.0
              and query.shape[2] == key.shape[2]
              and packed_seq_lens.shape[0] == query.shape[0] and not kwargs.get("output_attentions"))
    if not usable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    return _per_example(query, key, value, scaling, packed_seq_lens), None


def register() -> str:
    """Register PACKED_SDPA with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA


def use_packed_attention(model) -> bool:
    """Switch a model that runs transformers' sdpa to PACKED_SDPA (identical for every call that carries no
    packed_seq_lens); True when the model runs it now."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == PACKED_SDPA:
        return True
    if current != "sdpa":
        return False
    register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(PACKED_SDPA)
    else:
        config._attn_implementation = PACKED_SDPA
    return getattr(config, "_attn_implementation", None) == PACKED_SDPA

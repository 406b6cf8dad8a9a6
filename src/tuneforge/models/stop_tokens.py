"""Which token ids end a reply, for everything that generates (eval, PPO/GRPO sampling, the server).

A chat model ends a turn with its template's end-of-turn token (ChatML: <|im_end|>), which may be the model's
generation-config eos rather than the tokenizer's, so both count; generation stops at whichever comes first.
"""
from __future__ import annotations


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos and the model's generation-config eos (one id or a list), in that order, once each."""
    ids: list[int] = []
    generation = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, generation.eos_token_id if generation is not None else None):
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ValueError("the tokenizer has no eos token, so generation could not stop")
    return ids


def generation_pad_id(tokenizer, stop_ids: list[int]) -> int:
    """The id left padding is filled with: the tokenizer's pad token, else the first stop id (never attended)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]

"""Assistant-token masks from the chat template itself, where it marks replies with `{% generation %}`.

Why: transformers' `apply_chat_template(return_assistant_tokens_mask=True)` reads those blocks, so the
template's author decides what a reply is (a template may, say, leave a reasoning preamble out). Templates without
the blocks (most, SmolLM2's included) use the prefix-rendering method in formatting.py; on a template that has
them both give the same mask (tests/data/test_formats.py). Per-message `weight: 0` is applied by matching the
mask's runs to the assistant turns in order; when they cannot be matched one to one, None sends the caller to
the prefix method, which knows each turn's span.
"""
from __future__ import annotations

import re
from ..errors import DataError

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def template_source(tokenizer, tools=None) -> str | None:
    """The Jinja source of the chat template apply_chat_template would use (a named `tool_use` one with tools)."""
    try:
        return tokenizer.get_chat_template(None, tools)
    except Exception:  # no template at all
        template = getattr(tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None


def has_generation_blocks(tokenizer, tools=None) -> bool:
    source = template_source(tokenizer, tools)
    return bool(source and GENERATION_TAG.search(source))


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate(mask + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def generation_mask(tokenizer, messages: list[dict], tools=None) -> tuple[list[int], list[bool]] | None:
    """(input_ids, trained) from apply_chat_template's assistant mask, or None where it does not apply (no
    `{% generation %}` blocks, a slow tokenizer, weight-0 turns that cannot be matched to the mask's runs)."""
    if not getattr(tokenizer, "is_fast", False) or not has_generation_blocks(tokenizer, tools):
        return None
    try:
        enc = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    except Exception as e:
        raise DataError(f"cannot apply the tokenizer's chat template: {e}") from None
    ids, trained = list(enc["input_ids"]), [bool(m) for m in enc["assistant_masks"]]
    replies = [m for m in messages if m["role"] == "assistant"]
    if any(m.get("weight", 1) == 0 for m in replies):
        runs = _runs(trained)
        if len(runs) != len(replies):
            return None
        for (a, b), m in zip(runs, replies):
            if m.get("weight", 1) == 0:
                trained[a:b] = [False] * (b - a)
    return ids, trained

"""Records -> chat messages -> token ids with loss labels.

Why render through the tokenizer's own chat template: the fine-tuned model is later prompted with that same
template (`apply_chat_template(..., add_generation_prompt=True)`), so training must see exactly those tokens.

Which tokens are trained is found without knowing the template: for each assistant turn i, the text of
`messages[:i]` with the generation prompt is where the reply starts, and the text of `messages[:i+1]` is where
it ends. Both must be prefixes of the whole conversation's text (true for ChatML, Llama-3, Mistral, SmolLM2's
default system prompt, ...). The whole text is tokenized once and each token is labelled by its character
offsets, so token merges at a boundary cannot shift the labels.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import DataError

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of a position without loss (torch cross_entropy's ignore_index)


def detect_format(record: dict, source=None, line=None) -> str:
    """`chat` when the record has `messages`, `alpaca` when it has `instruction` and `output`."""
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    have = ", ".join(sorted(map(str, record))) or "none"
    raise DataError(
        f"cannot tell the data format from the keys ({have}); expected 'messages' (chat) or "
        "'instruction' + 'output' (alpaca), or set data.format",
        file=source, line=line,
    )


def to_messages(record: dict, fmt: str = "auto", system_prompt: str | None = None, *, source=None,
                line=None, prompt: str | None = None, target: str | None = None) -> list[dict[str, str]]:
    """One record as `[{role, content}, ...]`. The system prompt goes first unless the record brings its own.
    With `prompt` / `target` templates (format "template", or "auto" when a prompt is given) any record becomes
    one user turn and one assistant reply."""
    if fmt == "auto":
        fmt = "template" if prompt is not None else detect_format(record, source, line)
    if fmt == "alpaca":
        messages = _alpaca(record, source, line)
    elif fmt == "chat":
        messages = _chat(record, source, line)
    elif fmt == "template":
        if prompt is None or target is None:
            raise DataError("format 'template' needs prompt and target templates", file=source, line=line,
                            key="prompt")
        messages = [{"role": "user", "content": fill_template(prompt, record, source, line)},
                    {"role": "assistant", "content": fill_template(target, record, source, line)}]
    else:
        raise DataError(f"unknown data format {fmt!r}; choose alpaca, chat, template or auto", file=source,
                        line=line)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class _Fields(dict):
    """The record as str.format_map sees it: a missing field is a DataError naming the field."""

    def __init__(self, record: dict, source, line):
        super().__init__(record)
        self.source, self.line = source, line

    def __missing__(self, key):
        have = ", ".join(sorted(map(str, self))) or "none"
        raise DataError(f"the template names field '{key}', which this record lacks (it has: {have})",
                        file=self.source, line=self.line, key=key)


def fill_template(template: str, record: dict, source=None, line=None) -> str:
    """`template` with each {field} replaced by the record's value (str.format_map: {{ and }} are literal braces,
    {field!r} and format specs work as in Python)."""
    try:
        return template.format_map(_Fields(record, source, line))
    except DataError:
        raise
    except (ValueError, IndexError, AttributeError, KeyError) as e:
        raise DataError(f"cannot fill the template {template!r}: {e}", file=source, line=line) from None


def _text(record: dict, key: str, source, line, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"missing field '{key}'", file=source, line=line, key=key)
        return ""
    if not isinstance(value, str):
        raise DataError(f"'{key}' must be text, got {type(value).__name__}", file=source, line=line, key=key)
    return value


def _alpaca(record: dict, source, line) -> list[dict[str, str]]:
    instruction = _text(record, "instruction", source, line)
    extra = _text(record, "input", source, line, required=False)
    user = instruction + ("\n\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": user},
            {"role": "assistant", "content": _text(record, "output", source, line)}]


def _chat(record: dict, source, line) -> list[dict[str, str]]:
    messages = record.get("messages")
    if isinstance(messages, str):  # a CSV cell holding JSON
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as e:
            raise DataError(f"'messages' is not valid JSON: {e.msg}", file=source, line=line, key="messages") from None
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list of {role, content}", file=source, line=line,
                        key="messages")
    out = []
    for i, m in enumerate(messages):
        key = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"expected an object with role and content, got {type(m).__name__}", file=source,
                            line=line, key=key)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"role must be one of {', '.join(ROLES)}, got {role!r}", file=source, line=line,
                            key=f"{key}.role")
        if not isinstance(content, str):
            raise DataError(f"content must be text, got {type(content).__name__}", file=source, line=line,
                            key=f"{key}.content")
        if role == "system" and i > 0:
            raise DataError("a system message may only come first", file=source, line=line, key=f"{key}.role")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError("conversation has no assistant message to train on", file=source, line=line,
                        key="messages")
    return out


def tokenize_messages(tokenizer, messages: list[dict], max_length: int | None = None,
                      train_on: str = "assistant") -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` for one conversation, cut to max_length.

    labels equal input_ids on trained tokens and -100 elsewhere: with train_on="assistant" the trained tokens
    are each reply's content and its end-of-turn token (the template's whitespace after it is not trained).
    The sequence ends with EOS. labels[0] is always -100: nothing predicts the first token, and in a packed
    row this keeps the previous example's last position from being trained to predict it.
    """
    ids, labels = encode_conversation(tokenizer, messages, train_on)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # no template set (ValueError), or the template's own raise_exception (jinja)
        raise DataError(f"cannot apply the tokenizer's chat template: {e}") from None


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the [start, end) character span of each assistant reply in it."""
    full = render(tokenizer, messages)
    spans, prev_end = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        turn = render(tokenizer, messages[: i + 1])
        if not (full.startswith(turn) and turn.startswith(prompt) and prev_end <= len(prompt) < len(turn)):
            raise DataError(
                f"the chat template does not render this conversation prefix by prefix (at message {i}), "
                "so the assistant tokens cannot be located; use data.train_on=all or another template"
            )
        spans.append((len(prompt), len(turn)))
        prev_end = len(turn)
    return full, spans


def encode_conversation(tokenizer, messages: list[dict], train_on: str = "assistant") -> tuple[list[int], list[int]]:
    """Untruncated (input_ids, labels); see tokenize_messages."""
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
    if train_on == "all":
        full = render(tokenizer, messages)
        spans = [(0, len(full))]
    else:
        full, spans = assistant_spans(tokenizer, messages)
    ids, trained = _tokenize_with_spans(tokenizer, full, spans)
    eos = tokenizer.eos_token_id
    labels = [t if keep else IGNORE for t, keep in zip(ids, trained)]
    if eos is not None:
        labels = _untrain_after_eos(tokenizer, ids, labels, eos)
        train_last = train_on == "all" or messages[-1]["role"] == "assistant"
        ids, labels = _end_with_eos(tokenizer, ids, labels, eos, train_last)
    if labels:
        labels[0] = IGNORE
    return ids, labels


def _tokenize_with_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of the whole text and, per token, whether it overlaps a trained character span."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        trained, k = [], 0
        for a, b in enc["offset_mapping"]:  # offsets and spans both ascend: one sweep
            while k < len(spans) and spans[k][1] <= a:
                k += 1
            trained.append(k < len(spans) and spans[k][0] < b)
        return list(enc["input_ids"]), trained
    ids, trained, pos = [], [], 0  # slow tokenizers have no offsets: tokenize piece by piece
    for s, e in spans + [(len(text), len(text))]:
        for piece, keep in ((text[pos:s], False), (text[s:e], True)):
            if piece:
                piece_ids = tokenizer.encode(piece, add_special_tokens=False)
                ids += piece_ids
                trained += [keep] * len(piece_ids)
        pos = e
    return ids, trained


def _untrain_after_eos(tokenizer, ids: list[int], labels: list[int], eos: int) -> list[int]:
    """Whitespace the template puts after a trained end-of-turn token is not trained (ChatML's
    "<|im_end|>\\n"): generation stops at EOS, so those tokens are never produced."""
    labels = list(labels)
    for p in [p for p, t in enumerate(ids) if t == eos and labels[p] != IGNORE]:
        j = p + 1
        while j < len(ids) and labels[j] != IGNORE and ids[j] != eos:
            j += 1
        end_of_run = j == len(ids) or labels[j] == IGNORE
        if j > p + 1 and end_of_run and not tokenizer.decode(ids[p + 1 : j]).strip():
            labels[p + 1 : j] = [IGNORE] * (j - p - 1)
    return labels


def _end_with_eos(tokenizer, ids, labels, eos: int, train_last: bool):
    """Make EOS the last token: drop template whitespace after a final EOS, else append EOS."""
    if ids and ids[-1] == eos:
        return ids, labels
    if eos in ids:
        k = len(ids) - 1 - ids[::-1].index(eos)
        if not tokenizer.decode(ids[k + 1 :]).strip():
            return ids[: k + 1], labels[: k + 1]
    return ids + [eos], labels + [eos if train_last else IGNORE]


def build_sft_examples(records, tokenizer, cfg, source=None, *, stats: dict | None = None) -> list[dict]:
    """Tokenized SFT examples `{"input_ids", "labels"}` for a list of records, following cfg (a DataConfig:
    format, system_prompt, train_on, max_length).

    The format is decided once from the first record when cfg.format is "auto". Examples cut at max_length
    are kept and counted; an example left with no trained token (its reply was cut away entirely) is dropped,
    since it would cost compute and teach nothing. Pass a dict as `stats` to receive `records`, `examples`,
    `truncated`, `dropped` and `lengths` (untruncated token counts, for reports)."""
    from .readers import line_of

    fmt = cfg.format
    if fmt == "auto" and records:
        fmt = "template" if cfg.prompt is not None else detect_format(records[0], source, line_of(records[0], 0))
    examples, lengths, truncated, dropped = [], [], 0, 0
    for i, rec in enumerate(records):
        line = line_of(rec, i)
        messages = to_messages(rec, fmt, cfg.system_prompt, source=source, line=line, prompt=cfg.prompt,
                               target=cfg.target)
        try:
            ids, labels = encode_conversation(tokenizer, messages, cfg.train_on)
        except DataError as e:
            raise DataError(e.message, file=source, line=line, key=e.key) from None
        lengths.append(len(ids))
        if len(ids) > cfg.max_length:
            truncated += 1
            ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
        if all(t == IGNORE for t in labels):
            dropped += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
    if stats is not None:
        stats.update(records=len(records), examples=len(examples), truncated=truncated, dropped=dropped,
                     lengths=lengths)
    return examples


def select_records(records: list, limit: int | None, seed: int = 0) -> list:
    """A seeded random subset of `limit` records, kept in file order (all records when limit is None)."""
    import random

    if limit is None or limit >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def load_examples(cfg, tokenizer, split: str = "train", *, stats: dict | None = None) -> list[dict]:
    """Read, subset and tokenize one split ("train" or "validation") of a DataConfig; [] when the split has no
    file (no validation set). What a task's `prepare` calls."""
    from ..errors import ConfigError
    from .readers import read_records

    if cfg.mixture:
        from .mixing import load_mixture

        return load_mixture(cfg, tokenizer, split, stats=stats)
    path = cfg.train if split == "train" else cfg.validation
    if path is None:
        if split == "train":
            raise ConfigError("no training data: set data.train to a .jsonl/.json/.csv/.parquet file",
                              key="data.train")
        return []
    limit = cfg.limit_train if split == "train" else cfg.limit_eval
    records = select_records(read_records(path), limit, cfg.shuffle_seed)
    return build_sft_examples(records, tokenizer, cfg, source=path, stats=stats)

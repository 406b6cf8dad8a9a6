"""Records -> chat messages -> token ids with loss labels.

Why render through the tokenizer's own chat template: the fine-tuned model is later prompted with that same
template (`apply_chat_template(..., add_generation_prompt=True)`), so training must see exactly those tokens.

Record layouts (alpaca, chat / openai, sharegpt, prompt_completion, text, template) are read in formats.py;
raw-text layouts skip the template (encode_segments).

Which tokens are trained: where the template marks replies with `{% generation %}` blocks, transformers'
`apply_chat_template(return_assistant_tokens_mask=True)` says so (assistant_mask.py). Otherwise it is found
without knowing the template: for each assistant turn i, the text of
`messages[:i]` with the generation prompt is where the reply starts, and the text of `messages[:i+1]` is where
it ends. Both must be prefixes of the whole conversation's text (true for ChatML, Llama-3, Mistral, SmolLM2's
default system prompt, ...). The whole text is tokenized once and each token is labelled by its character
offsets, so token merges at a boundary cannot shift the labels.
"""
from __future__ import annotations

from ..errors import DataError
from .assistant_mask import template_source
from .formats import (ROLES, chat_messages, detect_format, prompt_completion, record_tools,  # noqa: F401
                      sharegpt_messages, text_segments)
from .readers import line_of

IGNORE = -100  # label of a position without loss (torch cross_entropy's ignore_index)


def resolve_format(fmt: str, record: dict | None, prompt: str | None = None, source=None, line=None) -> str:
    """data.format as a concrete layout: `auto` is template when a prompt template is set, else read from the
    record's keys; `openai` is the chat layout (the same `messages` parser)."""
    if fmt == "auto":
        if prompt is not None:
            return "template"
        return detect_format(record, source, line) if record is not None else "chat"
    return "chat" if fmt == "openai" else fmt


def to_conversation(record: dict, fmt: str = "auto", system_prompt: str | None = None, *, source=None, line=None,
                    prompt: str | None = None, target: str | None = None, text_field: str = "text") -> dict:
    """One record as `{"messages", "tools"}` (rendered with the chat template) or `{"segments"}` (raw text
    pieces with a trained flag, for formats text and string prompt_completion). See formats.py."""
    fmt = resolve_format(fmt, record, prompt, source, line)
    tools = None
    if fmt == "alpaca":
        messages = _alpaca(record, source, line)
    elif fmt == "chat":
        messages, tools = chat_messages(record, source, line), record_tools(record, source, line)
    elif fmt == "sharegpt":
        messages, tools = sharegpt_messages(record, source, line), record_tools(record, source, line)
    elif fmt == "prompt_completion":
        conv = prompt_completion(record, source, line)
        if "segments" in conv:
            return conv
        messages, tools = conv["messages"], conv["tools"]
    elif fmt == "text":
        return text_segments(record, text_field, source, line)
    elif fmt == "template":
        if prompt is None or target is None:
            raise DataError("format 'template' needs prompt and target templates", file=source, line=line,
                            key="prompt")
        messages = [{"role": "user", "content": fill_template(prompt, record, source, line)},
                    {"role": "assistant", "content": fill_template(target, record, source, line)}]
    else:
        raise DataError(f"unknown data format {fmt!r}; choose alpaca, chat, openai, sharegpt, prompt_completion, "
                        "text, template or auto", file=source, line=line)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"messages": messages, "tools": tools}


def to_messages(record: dict, fmt: str = "auto", system_prompt: str | None = None, *, source=None,
                line=None, prompt: str | None = None, target: str | None = None) -> list[dict]:
    """One record as `[{role, content, ...}, ...]`. The system prompt goes first unless the record brings its
    own. With `prompt` / `target` templates (format "template", or "auto" when a prompt is given) any record
    becomes one user turn and one assistant reply. Raw-text layouts (text, string prompt_completion) have no
    messages: a DataError."""
    conv = to_conversation(record, fmt, system_prompt, source=source, line=line, prompt=prompt, target=target)
    if "segments" in conv:
        raise DataError("this record is raw text (format text or prompt_completion with text fields), not a "
                        "conversation", file=source, line=line)
    return conv["messages"]


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


def tokenize_messages(tokenizer, messages: list[dict], max_length: int | None = None,
                      train_on: str = "assistant", tools: list[dict] | None = None) -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` for one conversation, cut to max_length.

    labels equal input_ids on trained tokens and -100 elsewhere: with train_on="assistant" the trained tokens
    are each reply's content and its end-of-turn token (the template's whitespace after it is not trained).
    The sequence ends with EOS. labels[0] is always -100: nothing predicts the first token, and in a packed
    row this keeps the previous example's last position from being trained to predict it.
    """
    ids, labels = encode_conversation(tokenizer, messages, train_on, tools=tools)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def check_tool_support(tokenizer, messages: list[dict], tools: list[dict] | None) -> None:
    """Tools and tool calls are rendered by the chat template itself; a template that never reads them would
    drop them silently, so that is an error."""
    calls = any(m.get("tool_calls") for m in messages)
    if not tools and not calls:
        return
    source = template_source(tokenizer, tools) or ""
    missing = [name for name, used in (("tools", bool(tools)), ("tool_calls", calls)) if used and name not in source]
    if missing:
        raise DataError(f"the tokenizer's chat template has no tool support (it never reads {' or '.join(missing)}),"
                        " so the record's tools / tool calls cannot be rendered; use a model whose chat template "
                        "supports tools (Qwen2.5, Llama 3.1, Mistral, ...) or drop them from the data")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
           tools: list[dict] | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # no template set (ValueError), or the template's own raise_exception (jinja)
        raise DataError(f"cannot apply the tokenizer's chat template: {e}") from None


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the [start, end) character span of each trained assistant reply in it
    (replies with weight 0 are context)."""
    full = render(tokenizer, messages, tools=tools)
    spans, prev_end = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        turn = render(tokenizer, messages[: i + 1], tools=tools)
        if not (full.startswith(turn) and turn.startswith(prompt) and prev_end <= len(prompt) < len(turn)):
            raise DataError(
                f"the chat template does not render this conversation prefix by prefix (at message {i}), "
                "so the assistant tokens cannot be located; use data.train_on=all or another template"
            )
        if m.get("weight", 1):
            spans.append((len(prompt), len(turn)))
        prev_end = len(turn)
    return full, spans


MASK_METHODS = ("auto", "generation", "prefix")


def encode_conversation(tokenizer, messages: list[dict], train_on: str = "assistant", *,
                        tools: list[dict] | None = None, mask_method: str = "auto") -> tuple[list[int], list[int]]:
    """Untruncated (input_ids, labels); see tokenize_messages.

    Which tokens are the replies: with mask_method "auto", the template's own `{% generation %}` blocks
    (`apply_chat_template(return_assistant_tokens_mask=True)`) where it has them, else prefix rendering
    (the module docstring); "generation" / "prefix" force one (tests compare them)."""
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
    if mask_method not in MASK_METHODS:
        raise ValueError(f"mask_method must be one of {MASK_METHODS}, got {mask_method!r}")
    check_tool_support(tokenizer, messages, tools)
    got = None
    if train_on == "all":
        full = render(tokenizer, messages, tools=tools)
        got = _tokenize_with_spans(tokenizer, full, [(0, len(full))])
    elif mask_method != "prefix":
        from .assistant_mask import generation_mask

        got = generation_mask(tokenizer, messages, tools)
        if got is None and mask_method == "generation":
            raise DataError("the chat template has no {% generation %} blocks (or the tokenizer is not a fast one), "
                            "so apply_chat_template cannot return an assistant-token mask")
    if got is None:
        full, spans = assistant_spans(tokenizer, messages, tools)
        got = _tokenize_with_spans(tokenizer, full, spans)
    ids, trained = got
    labels = [t if keep else IGNORE for t, keep in zip(ids, trained)]
    eos = tokenizer.eos_token_id
    if eos is not None:
        labels = _untrain_after_eos(tokenizer, ids, labels, eos)
        last = messages[-1]
        train_last = train_on == "all" or (last["role"] == "assistant" and last.get("weight", 1) != 0)
        ids, labels = _end_with_eos(tokenizer, ids, labels, eos, train_last)
    if labels:
        labels[0] = IGNORE
    return ids, labels


def encode_segments(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Raw text (no chat template) as (input_ids, labels): the tokenizer's own special tokens (a BOS) added,
    the trained segments' tokens labelled, and a trained EOS appended so the model learns where text ends."""
    text, spans, pos = "", [], 0
    for piece, keep in segments:
        if keep and piece:
            spans.append((pos, pos + len(piece)))
        text += piece
        pos += len(piece)
    ids, trained = _tokenize_with_spans(tokenizer, text, spans, add_special_tokens=True)
    labels = [t if keep else IGNORE for t, keep in zip(ids, trained)]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids, labels = ids + [eos], labels + [eos]
    if labels:
        labels[0] = IGNORE
    return ids, labels


def encode_record(tokenizer, conv: dict, train_on: str = "assistant", source=None, line=None
                  ) -> tuple[list[int], list[int]]:
    """A `to_conversation` result as (input_ids, labels); a template error names the record's file and line."""
    try:
        if "segments" in conv:
            return encode_segments(tokenizer, conv["segments"])
        return encode_conversation(tokenizer, conv["messages"], train_on, tools=conv.get("tools"))
    except DataError as e:
        if e.file is not None:
            raise
        raise DataError(e.message, file=source, line=line, key=e.key) from None


def _tokenize_with_spans(tokenizer, text: str, spans: list[tuple[int, int]], add_special_tokens: bool = False
                         ) -> tuple[list[int], list[bool]]:
    """Token ids of the whole text and, per token, whether it overlaps a trained character span."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        trained, k = [], 0
        for a, b in enc["offset_mapping"]:  # offsets and spans both ascend: one sweep
            while k < len(spans) and spans[k][1] <= a:
                k += 1
            trained.append(a < b and k < len(spans) and spans[k][0] < b)
        return list(enc["input_ids"]), trained
    ids, trained, pos = [], [], 0  # slow tokenizers have no offsets: tokenize piece by piece
    if add_special_tokens and getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        ids, trained = [tokenizer.bos_token_id], [False]
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


def chunk(ids: list[int], labels: list[int], max_length: int) -> list[tuple[list[int], list[int]]]:
    """A long raw text cut into max_length pieces (continued pre-training keeps all of it, not only the start);
    each piece's first label is -100 like every example's."""
    out = []
    for start in range(0, len(ids), max_length):
        piece_labels = list(labels[start : start + max_length])
        piece_labels[0] = IGNORE
        out.append((ids[start : start + max_length], piece_labels))
    return out


def build_sft_examples(records, tokenizer, cfg, source=None, *, stats: dict | None = None,
                       budget_tokens: int | None = None, budget_examples: int | None = None) -> list[dict]:
    """Tokenized SFT examples `{"input_ids", "labels"}` for records (a list or a stream), following cfg (a
    DataConfig: format, system_prompt, train_on, max_length, text_field).

    The format is decided once from the first record when cfg.format is "auto". Examples cut at max_length
    are kept and counted; an example left with no trained token (its reply was cut away entirely) is dropped,
    since it would cost compute and teach nothing. Format `text` cuts a long text into max_length pieces
    instead (counted as `split`). Reading stops once the examples hold `budget_tokens` tokens or number
    `budget_examples` (a stream).
    Pass a dict as `stats` to receive `records`, `examples`, `truncated`, `dropped`, `split` and `lengths`
    (untruncated token counts, for reports)."""
    fmt = None
    examples, lengths, truncated, dropped, split, total = [], [], 0, 0, 0, 0
    for i, rec in enumerate(records):
        line = line_of(rec, i)
        if fmt is None:
            fmt = resolve_format(cfg.format, rec, cfg.prompt, source, line)
        conv = to_conversation(rec, fmt, cfg.system_prompt, source=source, line=line, prompt=cfg.prompt,
                               target=cfg.target, text_field=getattr(cfg, "text_field", "text"))
        ids, labels = encode_record(tokenizer, conv, cfg.train_on, source, line)
        lengths.append(len(ids))
        if fmt == "text" and len(ids) > cfg.max_length:
            pieces = chunk(ids, labels, cfg.max_length)
            split += 1
        else:
            if len(ids) > cfg.max_length:
                truncated += 1
                ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
            pieces = [(ids, labels)]
        for ids, labels in pieces:
            if all(t == IGNORE for t in labels):
                dropped += 1
                continue
            examples.append({"input_ids": ids, "labels": labels})
            total += len(ids)
        if (budget_tokens is not None and total >= budget_tokens) or (
                budget_examples is not None and len(examples) >= budget_examples):
            break
    if stats is not None:
        stats.update(records=len(lengths), examples=len(examples), truncated=truncated, dropped=dropped,
                     split=split, lengths=lengths, format=fmt)
    return examples


def select_records(records: list, limit: int | None, seed: int = 0) -> list:
    """A seeded random subset of `limit` records, kept in file order (all records when limit is None)."""
    import random

    if limit is None or limit >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def split_opening(text: str, words: int) -> tuple[str, str]:
    """(the first `words` words, the rest), each joined by single spaces: the review openings PPO, eval, label
    pairs and best-of-n prompt with (`prompt_words`); the rest is empty for a text of that many words or fewer."""
    parts = text.split()
    return " ".join(parts[:words]), " ".join(parts[words:])

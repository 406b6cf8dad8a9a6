"""`tuneforge data preview`: see what the model will be trained on before spending hours on it.

Shows a few examples exactly as tokenized, with the trained tokens wrapped in ⟦…⟧ (readable in any terminal,
no colour needed), then token-length statistics over the whole split, so a wrong template, a mask that trains
on the prompt, or a max_length that cuts most answers is visible at a glance.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .formatting import IGNORE, build_sft_examples, encode_record, resolve_format, select_records, to_conversation
from .loading import source_options
from .packing import pack_examples, packing_efficiency
from .preferences import build_pairs
from .readers import line_of
from .sources import read_source

OPEN, CLOSE = "⟦", "⟧"



def _records_to_preview(records_or_path, cfg) -> tuple[list, str | None]:
    """The records training would see (the limit_train subset) and their source; a stream is previewed over its
    first limit_train records (1000 when unset)."""
    import itertools

    if isinstance(records_or_path, (str, Path)):
        records, source = read_source(str(records_or_path), **source_options(cfg, "train"),
                                      limit=cfg.limit_train, seed=cfg.shuffle_seed)
        if not isinstance(records, list):
            records = list(itertools.islice(records, cfg.limit_train or 1000))
    else:
        source = None
        records = select_records(list(records_or_path), cfg.limit_train, cfg.shuffle_seed)
    return records, source

def preview(records_or_path, tokenizer, cfg, n: int = 3) -> str:
    """A text report: the first n examples with trained tokens marked, then dataset statistics.
    `cfg` is a DataConfig; its limit_train subset is what gets previewed (what training would see). A path may
    name any source data.train accepts (a file or a Hugging Face dataset); a stream is previewed over its first
    limit_train records (1000 when unset)."""
    records, source = _records_to_preview(records_or_path, cfg)
    fmt = resolve_format(cfg.format, records[0] if records else None, cfg.prompt, source,
                         line_of(records[0], 0) if records else None)
    train_on = "all tokens (raw text)" if fmt == "text" else cfg.train_on
    lines = [f"data: {source or '(in memory)'}  format: {fmt}  train_on: {train_on}  max_length: {cfg.max_length}",
             f"legend: {OPEN}trained tokens{CLOSE}; text outside the brackets is context only (no loss)", ""]
    for i, rec in enumerate(records[:n]):
        line = line_of(rec, i)
        conv = to_conversation(rec, fmt, cfg.system_prompt, source=source, line=line, prompt=cfg.prompt,
                               target=cfg.target, text_field=cfg.text_field)
        ids, labels = encode_record(tokenizer, conv, cfg.train_on, source, line)
        cut = f", cut from {len(ids)}" if len(ids) > cfg.max_length else ""
        ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
        trained = sum(t != IGNORE for t in labels)
        where = f"row {line}" if getattr(source, "rows", False) else f"line {line}"
        lines.append(f"--- example {i + 1} ({where}): {len(ids)} tokens{cut}, {trained} trained ---")
        more = " [... continues in the next piece]" if cut and fmt == "text" else " [... truncated]"
        lines.append(mark_trained(tokenizer, ids, labels) + (more if cut else ""))
        lines.append("")
    stats: dict = {}
    examples = build_sft_examples(records, tokenizer, cfg, source=source, stats=stats)
    lines += summarize(examples, stats, cfg)
    return "\n".join(lines)


def mark_trained(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """Decode the tokens, wrapping each run of trained tokens in ⟦…⟧."""
    out, i = [], 0
    while i < len(input_ids):
        keep = labels[i] != IGNORE
        j = i
        while j < len(input_ids) and (labels[j] != IGNORE) == keep:
            j += 1
        text = tokenizer.decode(input_ids[i:j], skip_special_tokens=False)
        out.append(f"{OPEN}{text}{CLOSE}" if keep else text)
        i = j
    return "".join(out)


def summarize(examples: list[dict], stats: dict, cfg) -> list[str]:
    """Length statistics (untruncated lengths), truncation, trained share and packing efficiency."""
    lengths = sorted(stats["lengths"])
    count = len(lengths)
    lines = [f"records: {count}  examples: {stats['examples']}  dropped (nothing left to train): {stats['dropped']}"]
    if count:
        p95 = lengths[max(0, math.ceil(0.95 * count) - 1)]
        lines.append(f"tokens per example: min {lengths[0]}  mean {statistics.fmean(lengths):.1f}  "
                     f"median {statistics.median(lengths):g}  p95 {p95}  max {lengths[-1]}")
        cut = stats["truncated"]
        lines.append(f"truncated at max_length={cfg.max_length}: {cut} ({cut / count:.1%})")
        if stats.get("split"):
            lines.append(f"long texts cut into max_length pieces: {stats['split']}")
    total = sum(len(ex["input_ids"]) for ex in examples)
    trained = sum(t != IGNORE for ex in examples for t in ex["labels"])
    if total:
        lines.append(f"trained tokens: {trained} of {total} ({trained / total:.1%})")
    if cfg.packing and examples:
        rows = pack_examples(examples, cfg.max_length)
        lines.append(f"packing: {len(examples)} examples -> {len(rows)} rows of {cfg.max_length} tokens, "
                     f"efficiency {packing_efficiency(rows, cfg.max_length):.1%}")
    return lines


def preview_pairs(records_or_path, tokenizer, cfg, *, template: str = "chat", max_prompt_length: int | None = None,
                  append_eos: bool = False, n: int = 3) -> str:
    """The preference-pair preview (task dpo / reward): each pair's prompt as the model sees it, then the chosen
    and the rejected reply with their scored tokens marked, then what became of every pair (PairStats)."""
    records, source = _records_to_preview(records_or_path, cfg)
    pairs, stats = build_pairs(records, tokenizer, template=template, max_length=cfg.max_length,
                               max_prompt_length=max_prompt_length, append_eos=append_eos, source=source)
    lines = [f"data: {source or '(in memory)'}  preference pairs  template: {template}  max_length: {cfg.max_length}",
             f"legend: {OPEN}scored reply tokens{CLOSE}; the prompt is context only", ""]
    for i, pair in enumerate(pairs[:n]):
        where = f"row {pair['line']}" if getattr(source, "rows", False) else f"line {pair['line']}"
        lines.append(f"--- pair {i + 1} ({where}): prompt {len(pair['prompt_ids'])} tokens ---")
        lines.append(tokenizer.decode(pair["prompt_ids"], skip_special_tokens=False))
        for side in ("chosen", "rejected"):
            reply = tokenizer.decode(pair[f"{side}_ids"], skip_special_tokens=False)
            lines.append(f"{side} ({len(pair[f'{side}_ids'])} tokens): {OPEN}{reply}{CLOSE}")
        lines.append("")
    lines.append(stats.summary())
    return "\n".join(lines)

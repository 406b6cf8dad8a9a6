"""`tuneforge data preview`: see what the model will be trained on before spending hours on it.

Shows a few examples exactly as tokenized, with the trained tokens wrapped in ⟦…⟧ (readable in any terminal,
no colour needed), then token-length statistics over the whole split, so a wrong template, a mask that trains
on the prompt, or a max_length that cuts most answers is visible at a glance.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .formatting import IGNORE, build_sft_examples, detect_format, encode_conversation, select_records, to_messages
from .packing import pack_examples, packing_efficiency
from .readers import line_of, read_records

OPEN, CLOSE = "⟦", "⟧"


def preview(records_or_path, tokenizer, cfg, n: int = 3) -> str:
    """A text report: the first n examples with trained tokens marked, then dataset statistics.
    `cfg` is a DataConfig; its limit_train subset is what gets previewed (what training would see)."""
    if isinstance(records_or_path, (str, Path)):
        source, records = records_or_path, read_records(records_or_path)
    else:
        source, records = None, list(records_or_path)
    records = select_records(records, cfg.limit_train, cfg.shuffle_seed)
    fmt = cfg.format
    if fmt == "auto" and records:
        fmt = "template" if cfg.prompt is not None else detect_format(records[0], source, line_of(records[0], 0))
    lines = [f"data: {source or '(in memory)'}  format: {fmt}  train_on: {cfg.train_on}  max_length: {cfg.max_length}",
             f"legend: {OPEN}trained tokens{CLOSE}; text outside the brackets is context only (no loss)", ""]
    for i, rec in enumerate(records[:n]):
        messages = to_messages(rec, fmt, cfg.system_prompt, source=source, line=line_of(rec, i), prompt=cfg.prompt,
                               target=cfg.target)
        ids, labels = encode_conversation(tokenizer, messages, cfg.train_on)
        cut = f", cut from {len(ids)}" if len(ids) > cfg.max_length else ""
        ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
        trained = sum(t != IGNORE for t in labels)
        lines.append(f"--- example {i + 1} (line {line_of(rec, i)}): {len(ids)} tokens{cut}, {trained} trained ---")
        lines.append(mark_trained(tokenizer, ids, labels) + (" [... truncated]" if cut else ""))
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
    total = sum(len(ex["input_ids"]) for ex in examples)
    trained = sum(t != IGNORE for ex in examples for t in ex["labels"])
    if total:
        lines.append(f"trained tokens: {trained} of {total} ({trained / total:.1%})")
    if cfg.packing and examples:
        rows = pack_examples(examples, cfg.max_length)
        lines.append(f"packing: {len(examples)} examples -> {len(rows)} rows of {cfg.max_length} tokens, "
                     f"efficiency {packing_efficiency(rows, cfg.max_length):.1%}")
    return lines

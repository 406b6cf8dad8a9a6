"""Unpaired preference examples (KTO): one reply per row, labelled desirable or undesirable.

A record is either {prompt, completion, label} (label true/false, 1/0, "true"/"false", or text equal to
positive_label), or a pair {prompt, chosen, rejected}, which becomes one desirable and one undesirable example (as TRL's
unpair_preference_dataset). Rendering and cutting follow `tuneforge.data.preferences` (chat/raw templates, the
prompt keeps its last tokens, the reply is cut to fit max_length); empty replies are skipped and counted.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import torch

from ..errors import DataError
from .preferences import encode_prompt, encode_reply, pad_prompt_reply_rows
from .readers import line_of


@dataclasses.dataclass
class UnpairedStats:
    split: str = "train"
    rows: int = 0
    desirable: int = 0
    undesirable: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    first_lines: dict = dataclasses.field(default_factory=dict)
    truncated: int = 0

    @property
    def kept(self) -> int:
        return self.desirable + self.undesirable

    @property
    def truncated_pairs(self) -> int:  # the name the preference tasks' data report reads
        return self.truncated

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        self.first_lines.setdefault(reason, line)

    def summary(self) -> str:
        text = (f"{self.split}: {self.desirable + self.undesirable} examples from {self.rows} rows "
                f"({self.desirable} desirable, {self.undesirable} undesirable)")
        for reason, count in self.skipped.items():
            text += f"; skipped {count} {reason} (first at line {self.first_lines[reason]})"
        if self.truncated:
            text += f"; cut {self.truncated} prompts or replies to fit"
        return text


def _desirable(value, positive_label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == 1
    text = str(value).strip().casefold()
    if text in ("true", "false"):
        return text == "true"
    return text == positive_label.casefold()


def build_unpaired(records, tokenizer, *, template: str, max_length: int, max_prompt_length: int | None,
                   completion_field: str, label_field: str, positive_label: str, source=None,
                   split: str = "train") -> tuple[list[dict], UnpairedStats]:
    """`[{"prompt_ids", "reply_ids", "desirable", "line"}]` and the split's counts (replies end with EOS)."""
    budget = max_prompt_length or max_length // 2
    stats, out = UnpairedStats(split=split), []
    for i, record in enumerate(records):
        line = line_of(record, i)
        stats.rows += 1
        prompt = record.get("prompt", "")
        if "chosen" in record and "rejected" in record:
            sides = [(record["chosen"], True), (record["rejected"], False)]
        elif completion_field in record and label_field in record:
            sides = [(record[completion_field], _desirable(record[label_field], positive_label))]
        else:
            have = ", ".join(sorted(map(str, record))) or "none"
            raise DataError(f"needs '{completion_field}' and '{label_field}' (or chosen and rejected); record has: "
                            f"{have}", file=source, line=line)
        if not isinstance(prompt, str) or not all(isinstance(s, str) for s, _ in sides):
            raise DataError("prompt and replies must be text", file=source, line=line)
        prompt_ids = encode_prompt(tokenizer, prompt, template)
        if len(prompt_ids) > budget:
            prompt_ids, stats.truncated = prompt_ids[-budget:], stats.truncated + 1
        for reply, desirable in sides:
            if not reply.strip():
                stats.skip("empty replies", line)
                continue
            ids = encode_reply(tokenizer, prompt, reply.strip(), template) + [tokenizer.eos_token_id]
            room = max_length - len(prompt_ids)
            if len(ids) > room:
                ids, stats.truncated = ids[:room], stats.truncated + 1
            out.append({"prompt_ids": prompt_ids, "reply_ids": ids, "desirable": desirable, "line": line})
            if desirable:
                stats.desirable += 1
            else:
                stats.undesirable += 1
    return out, stats


def collate_unpaired(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows: the B examples, then B mismatched rows (prompt i with the reply of example i - 1, as
    TRL rotates them) for KTO's KL estimate. completion_mask marks reply tokens; desirable is a bool per example."""
    replies = [e["reply_ids"] for e in examples]
    rows = [(e["prompt_ids"], e["reply_ids"]) for e in examples]
    rows += [(e["prompt_ids"], r) for e, r in zip(examples, replies[-1:] + replies[:-1])]
    batch = pad_prompt_reply_rows(rows, pad_token_id)
    batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
    batch["num_tokens"] = torch.tensor(int(batch["attention_mask"][: len(examples)].sum()))
    return batch

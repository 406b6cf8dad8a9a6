"""Preference pairs `{prompt, chosen, rejected}` -> token ids, for reward models and DPO.

The plain, conversational (message lists) and OpenAI DPO (`input`, `preferred_output`,
`non_preferred_output`) layouts are read by pair_formats.py; a prompt given as messages is rendered with the
chat template (with the record's tools, when it has any).

A pair is kept as three id lists (prompt, chosen reply, rejected reply); the collate puts the chosen rows first
and the rejected rows after them in one batch, so one forward pass scores both sides.

Templates:
    chat  the prompt is rendered with the tokenizer's chat template up to the assistant's turn. A prompt in
          Anthropic HH form ("Human: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:") becomes its
          user/assistant turns; any other text is one user message. The reply follows the generation prompt.
    raw   plain text: prompt + " " + reply (the HH-RLHF README's way of rebuilding the source text); an empty
          prompt scores the reply alone (sentence-level preferences such as positive-over-negative reviews).

Bad rows never stop a run half way and are never lost silently: a missing or non-text field is a DataError
naming file, line and key (before training starts); a pair whose sides are equal or empty teaches nothing and
is skipped, and every skip and truncation is counted in `PairStats`, which the task prints.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter

import torch

from ..errors import DataError
from .formatting import check_tool_support, render, split_opening
from .loading import source_options
from .padding import pad
from .pair_formats import pair_fields
from .readers import Record, line_of
from .sources import read_source

TEMPLATES = ("chat", "raw")
FIELDS = ("prompt", "chosen", "rejected")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


@dataclasses.dataclass
class PairStats:
    """What became of a split's rows: kept pairs, skips by reason (with their first lines), truncations."""

    split: str = "train"
    rows: int = 0
    kept: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    skipped_lines: dict = dataclasses.field(default_factory=dict)
    truncated_prompts: int = 0
    truncated_replies: int = 0
    truncated_pairs: int = 0  # kept pairs with any side cut (each once), for the run's data report

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] += 1
        self.skipped_lines.setdefault(reason, []).append(line)

    def summary(self) -> str:
        text = f"{self.split}: kept {self.kept} of {self.rows} pairs"
        if self.skipped:
            parts = []
            for reason, count in self.skipped.most_common():
                lines = self.skipped_lines[reason]
                shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
                parts.append(f"{count} {reason} (line {shown})")
            text += "; skipped " + "; ".join(parts)
        if self.truncated_prompts:
            text += f"; cut {self.truncated_prompts} prompts to max_prompt_length (kept their end)"
        if self.truncated_replies:
            text += f"; cut {self.truncated_replies} replies to fit max_length"
        return text


def hh_messages(prompt: str) -> list[dict[str, str]] | None:
    """The turns of an HH-format dialogue ending in "Assistant:", without that empty final turn; None when the
    text is not in that form."""
    marks = list(_HH_TURN.finditer(prompt))
    if not marks or marks[0].start() != 0 or marks[-1].group(1) != "Assistant" or prompt[marks[-1].end():].strip():
        return None
    messages = []
    for mark, following in zip(marks[:-1], marks[1:]):
        role = "user" if mark.group(1) == "Human" else "assistant"
        messages.append({"role": role, "content": prompt[mark.end() : following.start()].strip()})
    return messages


def encode_prompt(tokenizer, prompt, template: str, tools: list | None = None) -> list[int]:
    """Token ids of the prompt as the model sees it before the reply (see the module docstring); `prompt` is
    text or a message list."""
    if template == "raw":
        if not isinstance(prompt, str):
            raise DataError("template 'raw' needs a text prompt; this pair's prompt is a conversation (use "
                            "task.template: chat)", key="prompt")
        return tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    messages = prompt if isinstance(prompt, list) else hh_messages(prompt) or [{"role": "user", "content": prompt}]
    check_tool_support(tokenizer, messages, tools)
    text = render(tokenizer, messages, add_generation_prompt=True, tools=tools)
    return tokenizer.encode(text, add_special_tokens=False)


def encode_reply(tokenizer, prompt, reply: str, template: str) -> list[int]:
    if template == "raw" and isinstance(prompt, str) and prompt and not prompt[-1].isspace() \
            and not reply[:1].isspace():
        reply = " " + reply
    return tokenizer.encode(reply, add_special_tokens=False)


def _text_field(record: dict, key: str, source, line: int) -> str:
    if key not in record:
        have = ", ".join(sorted(map(str, record))) or "none"
        raise DataError(f"missing field '{key}' (record has: {have})", file=source, line=line, key=key)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"'{key}' must be text, got {type(value).__name__}", file=source, line=line, key=key)
    return value


def build_pairs(records, tokenizer, *, template: str = "chat", max_length: int = 512,
                max_prompt_length: int | None = None, append_eos: bool = False, source=None,
                split: str = "train") -> tuple[list[dict], PairStats]:
    """Tokenised pairs `{"prompt_ids", "chosen_ids", "rejected_ids", "line"}` and the split's PairStats.

    A prompt over max_prompt_length (default max_length // 2) keeps its last tokens (the latest turns); replies
    are cut so prompt + reply fits max_length. append_eos ends each reply with the tokenizer's EOS (DPO: the
    policy should learn where to stop). Skipped: chosen == rejected, an empty side, sides equal after cutting."""
    if template not in TEMPLATES:
        raise DataError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}", key="template")
    prompt_budget = max_prompt_length or max_length // 2
    eos = [tokenizer.eos_token_id] if append_eos else []
    stats, pairs = PairStats(split=split), []
    for i, record in enumerate(records):
        line = line_of(record, i)
        stats.rows += 1
        prompt, chosen, rejected, tools = pair_fields(record, source, line)
        if not chosen.strip() or not rejected.strip():
            stats.skip("with an empty reply", line)
            continue
        if chosen.strip() == rejected.strip():
            stats.skip("with chosen == rejected", line)
            continue
        try:
            prompt_ids = encode_prompt(tokenizer, prompt, template, tools)
        except DataError as e:
            raise DataError(e.message, file=source, line=line, key=e.key) from None
        cut = len(prompt_ids) > prompt_budget
        if cut:
            prompt_ids = prompt_ids[-prompt_budget:]
            stats.truncated_prompts += 1
        room = max_length - len(prompt_ids)
        sides = []
        for reply in (chosen, rejected):
            ids = encode_reply(tokenizer, prompt, reply.strip(), template) + eos
            if len(ids) > room:
                ids = ids[:room]
                stats.truncated_replies += 1
                cut = True
            sides.append(ids)
        if sides[0] == sides[1]:
            stats.skip("identical after cutting to max_length", line)
            continue
        stats.truncated_pairs += cut
        pairs.append({"prompt_ids": prompt_ids, "chosen_ids": sides[0], "rejected_ids": sides[1], "line": line})
        stats.kept += 1
    return pairs, stats


def collate_pairs(pairs: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows [chosen_1..chosen_B, rejected_1..rejected_B]:
    input_ids, attention_mask, and completion_mask (1 on reply tokens: what DPO sums log-probabilities over)."""
    rows = [(p["prompt_ids"], p[side]) for side in ("chosen_ids", "rejected_ids") for p in pairs]
    batch = pad_prompt_reply_rows(rows, pad_token_id)
    batch["num_tokens"] = torch.tensor(int(batch["attention_mask"].sum()))
    return batch


def pad_prompt_reply_rows(rows: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """(prompt ids, reply ids) rows, right-padded: input_ids, attention_mask and completion_mask (1 on reply
    tokens), what every preference loss sums log-probabilities over."""
    ids, mask = pad([list(prompt) + list(reply) for prompt, reply in rows], pad_token_id)
    completion = pad([[0] * len(prompt) + [1] * len(reply) for prompt, reply in rows], 0)[0]
    return {"input_ids": ids, "attention_mask": mask, "completion_mask": completion}


def pairs_from_labels(records, *, text_field: str, label_field: str, positive_label: str, seed: int = 0,
                      source=None, prompt_words: int | None = None) -> list[dict]:
    """Preference pairs from single texts with a binary label (thumbs up / down, a sentiment set): the texts
    labelled positive_label, shuffled, are each paired with one of the others, shuffled, prompt empty; the
    surplus of the larger side is left out. Each pair keeps the line of its chosen text.

    prompt_words=N makes the pairs continuations of an opening, as a policy is used when it continues one:
    the prompt is the first N words of one side's text (the chosen text's in even pairs, the rejected text's
    in odd ones, so openings of both kinds lead to the preferred reply) and each reply is the rest of its own
    text after its first N words. A text of N words or fewer leaves an empty reply: build_pairs skips it."""
    import random

    positive, negative = [], []
    for i, record in enumerate(records):
        line = line_of(record, i)
        text = _text_field(record, text_field, source, line)
        if label_field not in record:
            raise DataError(f"missing field '{label_field}'", file=source, line=line, key=label_field)
        (positive if str(record[label_field]) == positive_label else negative).append((text, line))
    rng = random.Random(seed)
    rng.shuffle(positive)
    rng.shuffle(negative)
    pairs = []
    for k, ((good, line), (bad, _)) in enumerate(zip(positive, negative)):
        prompt = ""
        if prompt_words:
            (good_opening, good), (bad_opening, bad) = split_opening(good, prompt_words), split_opening(bad, prompt_words)
            prompt = good_opening if k % 2 == 0 else bad_opening
        pairs.append(Record({"prompt": prompt, "chosen": good, "rejected": bad}, line))
    return pairs


def load_pair_splits(data_cfg, tokenizer, *, template: str, max_prompt_length: int | None, append_eos: bool,
                     labels: dict | None = None, budget_rows: int | None = None
                     ) -> tuple[list[dict], list[dict], list[PairStats]]:
    """Train and validation pairs of a DataConfig (limit_train / limit_eval subsets), with each split's stats.
    `labels` ({text_field, label_field, positive_label}) builds the pairs from labelled single texts instead.
    A streamed source (data.streaming) gives its first budget_rows records (or limit_train).
    A split whose rows were all skipped is an error: training on nothing would only look like success."""
    import itertools

    out, stats = [], []
    for split, path, limit in (("train", data_cfg.train, data_cfg.limit_train),
                               ("validation", data_cfg.validation, data_cfg.limit_eval)):
        if path is None:
            if split == "train":
                raise DataError("preference training needs a data file", key="data.train")
            out.append([])
            continue
        records, source = read_source(path, **source_options(data_cfg, split), limit=limit,
                                      seed=data_cfg.shuffle_seed)
        if not isinstance(records, list):  # a stream
            records = list(itertools.islice(records, budget_rows) if split == "train" and limit is None
                           and budget_rows is not None else records)
        if labels is not None:
            records = pairs_from_labels(records, **labels, seed=data_cfg.shuffle_seed, source=source)
        pairs, split_stats = build_pairs(records, tokenizer, template=template, max_length=data_cfg.max_length,
                                         max_prompt_length=max_prompt_length, append_eos=append_eos,
                                         source=source, split=split)
        if not pairs:
            raise DataError(f"no usable preference pairs: {split_stats.summary()}", file=source)
        out.append(pairs)
        stats.append(split_stats)
    return out[0], out[1], stats

"""How many records became training examples, and how many were dropped or cut, per split.

Why: an SFT example whose reply is cut away entirely by data.max_length has nothing to train and is dropped; a
run that silently trained on 3 of 40 examples and exited 0 looked like a success. Every task that can drop or
truncate rows reports counts through an optional `data_report()` hook:

    {"train": {"records": 40, "examples": 3, "dropped": 37, "truncated": 39}, "validation": {...}}

`summarize` adds the shares, `warn_lines` lists the splits above data.warn_dropped_share, and `check_train`
makes a split of which every record was dropped an error (before any model time is spent training on nothing).
"""
from __future__ import annotations

from ..errors import ConfigError


def summarize(report: dict) -> dict:
    """The report with dropped_share and truncated_share (of the split's records) added to every split."""
    out = {}
    for split, counts in report.items():
        records = int(counts.get("records", 0))
        entry = {key: int(counts.get(key, 0)) for key in ("records", "examples", "dropped", "truncated")}
        entry["dropped_share"] = entry["dropped"] / records if records else 0.0
        entry["truncated_share"] = entry["truncated"] / records if records else 0.0
        out[split] = entry
    return out


def describe(split: str, entry: dict) -> str:
    return (f"{split} data: {entry['examples']} examples from {entry['records']} records; dropped "
            f"{entry['dropped']} ({entry['dropped_share']:.1%}), truncated {entry['truncated']} "
            f"({entry['truncated_share']:.1%})")


def warn_lines(summary: dict, threshold: float, max_length: int) -> list[str]:
    """A warning for each split whose dropped or truncated share is above `threshold`."""
    out = []
    for split, entry in summary.items():
        if entry["dropped_share"] > threshold:
            out.append(f"warning: {entry['dropped']} of {entry['records']} {split} records "
                       f"({entry['dropped_share']:.1%}) were dropped (the reasons, with their first lines, are "
                       f"printed where the data was read: e.g. nothing left to train once cut at "
                       f"data.max_length={max_length}, or an empty reply); if it is the length, raise "
                       f"data.max_length or shorten the prompts (warned above "
                       f"data.warn_dropped_share={threshold:g})")
        if entry["truncated_share"] > threshold:
            out.append(f"warning: {entry['truncated']} of {entry['records']} {split} records "
                       f"({entry['truncated_share']:.1%}) were cut at data.max_length={max_length} "
                       f"(warned above data.warn_dropped_share={threshold:g})")
    return out


def check_train(summary: dict, max_length: int) -> None:
    """Every training record dropped: an error, not a run on nothing."""
    entry = summary.get("train")
    if entry and entry["records"] and entry["examples"] == 0:
        raise ConfigError(f"all {entry['records']} training records were dropped: none has a trained token left "
                          f"within data.max_length={max_length} (their replies are cut away); raise "
                          f"data.max_length", key="data.max_length")

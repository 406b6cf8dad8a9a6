"""What a run says about its data. Plain data only (paths, numbers, names), so the same dataclass feeds YAML,
CLI overrides and the docs; `tuneforge.config` reuses it as `RunConfig.data`. Each field's docstring is the
string right below it (the litgpt convention)."""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError

FORMATS = ("auto", "alpaca", "chat")
TRAIN_ON = ("assistant", "all")


@dataclasses.dataclass
class DataConfig:
    train: str | None = None
    """Training records: a .jsonl, .json (array), .csv or .parquet file."""

    validation: str | None = None
    """Held-out records in the same formats, used for evaluation; none means no eval set."""

    format: str = "auto"
    """Record layout: `alpaca` (instruction, input, output), `chat` (messages: [{role, content}]) or `auto`
    (decided from the first record's keys)."""

    max_length: int = 512
    """Tokens per example (and per packed row); longer examples are cut at the end and counted as truncated."""

    packing: bool = True
    """Pack several short examples into one row of max_length tokens. Each example keeps its own positions and
    a block-diagonal causal mask, so the loss equals that of unpacked training; fewer pad tokens are computed."""

    train_on: str = "assistant"
    """Which tokens carry a loss: `assistant` (the replies, with their end-of-turn token) or `all` tokens."""

    system_prompt: str | None = None
    """System message put first in every conversation that has none of its own."""

    limit_train: int | None = None
    """Use only this many training records (a seeded random subset, kept in file order)."""

    limit_eval: int | None = None
    """Use only this many validation records (a seeded random subset, kept in file order)."""

    shuffle_seed: int = 0
    """Seed for picking the limit_train / limit_eval subsets (the training loop shuffles batches itself)."""

    def validate(self) -> None:
        """Raise ConfigError naming the key of the first bad value."""
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}", key="format")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(
                f"unknown train_on {self.train_on!r}; choose one of {', '.join(TRAIN_ON)}", key="train_on"
            )
        if self.max_length < 2:
            raise ConfigError("max_length must be at least 2 tokens", key="max_length")
        for key in ("limit_train", "limit_eval"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive number of records (or null for all)", key=key)

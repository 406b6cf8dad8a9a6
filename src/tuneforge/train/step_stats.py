"""Sums over optimizer steps: the loss, target and token counts and seconds that a metrics.jsonl line averages.

A logged line covers the `log_every` steps since the previous one, so its loss is the sum of their summed
losses over the sum of their targets (every target weighs the same, as within a step), and its throughput is
their tokens over their seconds. The window since the last line is checkpointed, so a resumed run logs the same
lines; it is stored as the list [loss_sum, targets, tokens, seconds], the form older checkpoints hold.
"""
from __future__ import annotations

import math
from dataclasses import astuple, dataclass


@dataclass(frozen=True)
class StepStats:
    loss_sum: float = 0.0
    """Summed loss over the targets of the steps (nan once a step had no targets)."""
    targets: int = 0
    """Loss targets (trained tokens, examples or pairs, as the task counts them)."""
    tokens: int = 0
    """Input tokens processed, for throughput."""
    seconds: float = 0.0
    """Wall time of the steps."""

    def __add__(self, other: "StepStats") -> "StepStats":
        return StepStats(self.loss_sum + other.loss_sum, self.targets + other.targets, self.tokens + other.tokens,
                         self.seconds + other.seconds)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.targets if self.targets else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_list(self) -> list:
        return list(astuple(self))

    @classmethod
    def from_list(cls, values) -> "StepStats":
        return cls(*values)

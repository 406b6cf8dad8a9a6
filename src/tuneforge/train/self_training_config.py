"""`task.self_training`: the settings of self-training on pseudo-labels, shared by every classification task
(`task: classify`, and any task that implements the hooks listed in train/self_training.py).

    task:
      name: classify
      labels: [negative, positive]
      self_training: {unlabeled: sst2:train, threshold: 0.9, rounds: 2, balance: true}
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import ConfigError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclasses.dataclass
class SelfTrainingConfig:
    unlabeled: str
    """Records to pseudo-label, from any source `data.train` accepts (a file, a datasets source, a data set
    reference such as `sst2:train`). Their labels, if they carry any, are never trained on: they only measure
    how accurate the pseudo-labels are (`pseudo_accuracy` per round), and must be in the task's label set.
    Records whose input equals a labelled training record's are left out of the pool."""

    threshold: float = 0.9
    """Keep a pseudo-label only when the model's probability of its predicted class is at least this."""

    rounds: int = 2
    """Self-training rounds after round 0 (round 0 trains on the labelled records alone: the supervised
    baseline). Each round pseudo-labels the whole pool again with the previous round's model."""

    balance: bool = False
    """Keep the same number of pseudo-labels for every class: the most confident ones, as many per class as
    the class with the fewest above the threshold has (none at all when a class has none)."""

    max_per_round: int | None = None
    """At most this many pseudo-labels per round, the most confident ones (with balance: this many // classes
    per class)."""

    reinit: bool = True
    """Start every round from the initial weights (classic self-training: the student is trained anew on
    labelled + pseudo-labelled records, so a round's mistakes are not trained into the next model twice).
    false: every round continues from the previous round's weights (fewer steps needed, more confirmation bias)."""

    max_steps: int | None = None
    """Optimizer steps of each self-training round (round 1 on); null: the same steps or epochs as round 0
    (train.max_steps / train.epochs). More labelled + pseudo-labelled records than labelled ones may need more
    steps to be seen; the supervised round 0 keeps train's budget either way."""

    limit: int | None = None
    """Use only this many of the unlabelled records (a seeded subset by data.shuffle_seed, drawn after the
    records equal to a labelled one are left out): a smaller pool keeps each round's pseudo-labelling short."""

    split: str = "train"
    """Split of a datasets source named by `unlabeled` (a DatasetDict folder or a hub id)."""

    def validate(self) -> None:
        from ..config.data_sets import resolve_data_path

        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be a probability in [0, 1], got {self.threshold}", key="threshold")
        if self.rounds < 1:
            raise ConfigError("rounds must be at least 1 (round 0, the supervised one, always runs)", key="rounds")
        for key in ("max_per_round", "limit", "max_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive number (or null for no limit)", key=key)
        if not isinstance(self.unlabeled, str) or not self.unlabeled:
            raise ConfigError("unlabeled must name the records to pseudo-label", key="unlabeled")
        self.unlabeled = resolve_data_path(self.unlabeled, key="unlabeled")
        path = Path(self.unlabeled)
        if path.suffix.lower() in DATA_SUFFIXES and "*" not in self.unlabeled and not path.exists():
            raise ConfigError(f"unlabeled file {self.unlabeled} not found", key="unlabeled")

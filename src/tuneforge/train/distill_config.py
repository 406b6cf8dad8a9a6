"""`task.distill`: knowledge distillation into a classifier from trained teacher runs, on the training records
plus word-span crops of them that the teachers label (train/distill.py).

    task:
      name: classify
      labels: [negative, positive]
      distill: {teachers: [runs/sst2-full/seed-42, runs/sst2-full/seed-43], crops_per_record: 8}
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

from ..errors import ConfigError


@dataclasses.dataclass
class DistillConfig:
    teachers: list[str]
    """Folders of finished `task: classify` runs (each with config.yaml and adapter/), any model and method:
    their mean class probabilities are the crops' targets. Their label sets must be the student's, in order."""

    teacher_weights: Union[list[float], None] = None
    """Weight of each teacher in the targets' mean, in the order of `teachers` (normalised to sum 1): a teacher of
    another family can count as much as several seeds of one. null: every teacher the same."""

    crops_per_record: int = 8
    """Word-span crops drawn per training record (contiguous runs of its words, shorter than the record, at
    least min_words long; a crop equal to a training text or to another crop is drawn once)."""

    min_words: int = 3
    """The shortest crop, in whitespace-separated words; records of min_words words or fewer give none."""

    temperature: float = 1.0
    """Softens teacher and student alike on the crops: target softmax(z_teacher / T), loss
    -sum p_T log softmax(z_student / T) * T^2 (Hinton et al. 2015). 1: the teachers' own probabilities."""

    seed: int = 0
    """Seed of the crops, fixed apart from train.seed so runs of several seeds learn from the same crops."""

    batch_size: int = 256
    """Crops per teacher forward pass while labelling."""

    def check_teachers(self, folders: list[str] | None = None) -> None:
        """Every teacher (or those of `folders`) is a finished run folder: checked when the teachers are needed
        (labelling), not when a config is read, so a distilled run still evaluates after its teachers are gone."""
        for folder in self.teachers if folders is None else folders:
            if not (Path(folder) / "config.yaml").is_file():
                raise ConfigError(f"teacher {folder} is not a finished run folder (no config.yaml in it): train "
                                  f"it first (`tuneforge train ...`)", key="task.distill.teachers")
            if not (Path(folder) / "adapter").is_dir():
                raise ConfigError(f"teacher {folder} has no adapter/ folder: its training has not finished "
                                  f"(`tuneforge train` on its config resumes it)", key="task.distill.teachers")

    def validate(self) -> None:
        if not isinstance(self.teachers, list) or not self.teachers:
            raise ConfigError("teachers must list at least one trained classify run folder", key="teachers")
        if not all(isinstance(t, str) and t for t in self.teachers):
            raise ConfigError("teachers must be run folder paths", key="teachers")
        if self.teacher_weights is not None:
            weights = self.teacher_weights
            if not isinstance(weights, list) or len(weights) != len(self.teachers):
                raise ConfigError(f"teacher_weights must list one number per teacher ({len(self.teachers)}), got "
                                  f"{weights!r}", key="teacher_weights")
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights) \
                    or not sum(weights) > 0:
                raise ConfigError(f"teacher_weights must be numbers of at least 0, not all 0, got {weights!r}",
                                  key="teacher_weights")
        for key in ("crops_per_record", "min_words", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a positive whole number, got {value!r}", key=key)
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or self.temperature <= 0:
            raise ConfigError(f"temperature must be a number above 0, got {self.temperature!r}", key="temperature")

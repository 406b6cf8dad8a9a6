"""What the preference tasks (reward, DPO) share: their settings, pair data loading and the pair collate.

Each example is one pair; the collate stacks the chosen rows on top of the rejected rows, and each pair is one
loss target, so the loop averages the loss over pairs. See `tuneforge.data.preferences` for how a record
becomes ids and which rows are skipped (and counted).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Union

import torch

from ...errors import ConfigError
from .base import BaseTask, batch_context


@dataclasses.dataclass
class PreferenceConfig:
    template: Literal["chat", "raw"] = "chat"
    """How a pair becomes text: chat (the tokenizer's chat template; HH "Human:/Assistant:" prompts become
    turns) or raw (prompt + " " + reply; an empty prompt scores the reply alone)."""

    max_prompt_length: Union[int, None] = None
    """Longest prompt in tokens; longer ones keep their last tokens (counted). None: half of data.max_length."""

    label_field: Union[str, None] = None
    """Build pairs from single labelled texts instead of {prompt, chosen, rejected} records: each text whose
    label is positive_label is paired with one whose label is not (seeded), with an empty prompt."""

    text_field: str = "text"
    """With label_field: the record field holding the text."""

    positive_label: str = "1"
    """With label_field: the label value (compared as text) of the preferred texts."""

    prompt_words: Union[int, None] = None
    """With label_field: make each pair an opening and two continuations: the prompt is the first N words of
    one side's text (alternately the chosen and the rejected one) and each reply the rest of its own text, so a
    policy learns to continue openings, positive or negative, the preferred way. None: empty prompt, whole texts."""

    def label_pairs(self) -> dict | None:
        if self.label_field is None:
            return None
        return {"text_field": self.text_field, "label_field": self.label_field, "positive_label": self.positive_label,
                "prompt_words": self.prompt_words}

    def validate(self) -> None:
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError("max_prompt_length must be at least 1 (or null)", key="max_prompt_length")
        if self.prompt_words is not None and self.prompt_words < 1:
            raise ConfigError("prompt_words must be at least 1 (or null)", key="prompt_words")
        if self.prompt_words is not None and self.label_field is None:
            raise ConfigError("prompt_words splits labelled texts into opening + reply; set label_field too",
                              key="prompt_words")


def pair_metrics(losses, chosen, rejected, sums, counts) -> dict[str, float]:
    """Validation metrics of a pair-scored task (DPO, ORPO, SimPO, CPO, KTO); chosen rows first in sums/counts.
    reward_accuracy: pairs whose implicit reward (the task's own: a log-ratio to the reference for DPO and KTO,
    so 0 for every pair before training) ranks chosen first; logp_accuracy / avg_logp_accuracy: pairs where the
    policy itself gives the chosen reply the higher summed / per-token log-probability, the same measure for every
    task and for the untouched model. Ties count as wrong."""
    (sc, sr), (nc, nr) = sums.chunk(2), counts.clamp(min=1).to(sums.dtype).chunk(2)
    return {"eval_loss": float(losses.mean()), "reward_accuracy": float((chosen > rejected).float().mean()),
            "chosen_reward": float(chosen.mean()), "rejected_reward": float(rejected.mean()),
            "reward_margin": float((chosen - rejected).mean()), "logp_accuracy": float((sc > sr).float().mean()),
            "avg_logp_accuracy": float((sc / nc > sr / nr).float().mean()), "eval_pairs": int(chosen.numel())}


def check_pair_loss(beta: float, label_smoothing: float = 0.0, loss_type: str = "sigmoid") -> None:
    """The settings DPO, SimPO and CPO share: beta > 0, label smoothing in [0, 0.5) and only for sigmoid losses."""
    if beta <= 0:
        raise ConfigError("beta must be positive", key="beta")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError("label_smoothing must be in [0, 0.5)", key="label_smoothing")
    if label_smoothing and loss_type not in ("sigmoid", "simpo"):
        raise ConfigError("label_smoothing applies to loss_type sigmoid only", key="label_smoothing")


def check_prompt_budget(cfg: PreferenceConfig, max_length: int) -> None:
    if cfg.max_prompt_length is not None and cfg.max_prompt_length >= max_length:
        raise ConfigError(f"max_prompt_length ({cfg.max_prompt_length}) must be below data.max_length "
                          f"({max_length}) to leave room for the replies", key="task.max_prompt_length")


def load_preferences(task, run_cfg, tokenizer, append_eos: bool) -> tuple[list, list]:
    """Shared `prepare` of the preference tasks: pairs of both splits, with the skip summary printed now and
    kept on the task (`task.data_notes()`) for the end of the run."""
    from ...data.preferences import load_pair_splits
    from .sft import stream_budget

    check_prompt_budget(task.cfg, run_cfg.data.max_length)
    task.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, evals, task.pair_stats = load_pair_splits(
        run_cfg.data, tokenizer, template=task.cfg.template, max_prompt_length=task.cfg.max_prompt_length,
        append_eos=append_eos, labels=task.cfg.label_pairs(), budget_rows=stream_budget(run_cfg))
    for line in task.data_notes():
        print(line)
    return train, evals


class PreferenceTask(BaseTask):
    """What the reward and DPO tasks share: pair data, pair collate, one target per pair."""

    config_class = PreferenceConfig

    def __init__(self):
        self.cfg = self.config_class()
        self.pad_token_id = 0
        self.pair_stats = []

    def data_notes(self) -> list[str]:
        return [s.summary() for s in self.pair_stats]

    def data_report(self) -> dict:
        """Rows read, pairs kept, rows skipped and pairs cut per split (see train/data_report.py)."""
        return {s.split: {"records": s.rows, "examples": s.kept, "dropped": sum(s.skipped.values()),
                          "truncated": s.truncated_pairs} for s in self.pair_stats}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from ...data.preferences import collate_pairs

        return collate_pairs(examples, self.pad_token_id)

    def num_targets(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0] // 2)

    def evaluate_pairs(self, model, batches) -> dict[str, float]:
        """`pair_metrics` over pair batches, from the task's pair_terms(model, batch) -> (per-pair losses, chosen
        rewards, rejected rewards, (policy log-prob sums, reply token counts) of all rows)."""
        parts = []
        for batch in batches:
            with batch_context(model, batch), torch.no_grad():
                losses, c, r, (sums, counts) = self.pair_terms(model, batch)
            parts.append((losses, c, r, *sums.chunk(2), *counts.chunk(2)))
        if not parts:
            return {}
        losses, c, r, sc, sr, nc, nr = (torch.cat(column) for column in zip(*parts))
        return pair_metrics(losses, c, r, torch.cat([sc, sr]), torch.cat([nc, nr]))

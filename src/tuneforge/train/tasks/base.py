"""The Task protocol: everything the one training loop needs to know about an objective, and nothing more.

The loop asks a task to turn examples into a batch (`collate`), how many target tokens/items a batch holds
(`num_targets`) and for the *summed* loss over them (`loss_sum`). Summing, not averaging, is what lets the loop
normalise over all targets of an optimizer step, so gradient accumulation over micro-batches with unequal
target counts gives exactly the gradient of one big batch:

    loss(step) = sum_b loss_sum(b) / sum_b num_targets(b)

Tasks register by name (`@TASKS.register("sft")`) in their own file under train/tasks/ and are built with no
arguments (`TASKS.get(name)()`); `prepare` takes what they need from the run config and tokenizer (a task with
settings declares a `config_class`; the config loader puts the validated settings in `run_cfg.task_config`).

Hooks `train()` calls on every task, declared on BaseTask with a default that does nothing (a task overrides
those it needs):
    load_preprocessor(run_cfg) -> object                what `prepare` gets: the tokenizer, or an image processor
    configure_model(model, run_cfg) -> None              check the loaded model against the task (head size)
    configure_method(method_cfg, model) -> method_cfg   e.g. add a new classifier head to modules_to_save
    run(model, tokenizer, run_cfg, output_dir, resume, progress) -> TrainResult   a task that is not one loss
                                                         per batch (PPO) runs its own loop instead of the shared one
    export(model, tokenizer, run_cfg, output_dir) -> path   extra artefacts after the adapter is saved
    data_notes() -> list[str]                            rows the task skipped or cut, repeated at the end
    example_length(example) -> int | None                tokens of an example, for train.group_by_length
    encode_unlabeled / logits / example_key              self-training on pseudo-labels (train/self_training.py)
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
from torch import nn

from ... import methods, models


@runtime_checkable
class Task(Protocol):
    name: str

    def prepare(self, run_cfg: Any, tokenizer: Any) -> tuple[list, list]:
        """Read and tokenise the run's data: (train_examples, eval_examples)."""

    def collate(self, examples: list) -> dict[str, torch.Tensor]:
        """Examples -> one batch of tensors (on CPU; the loop moves it to the model's device)."""

    def num_targets(self, batch: dict) -> int:
        """How many loss terms `loss_sum` adds up for this batch."""

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The loss summed (not averaged) over the batch's targets, as a scalar tensor with grad."""

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        """Metrics over held-out batches (called in eval mode, under no_grad)."""


def batch_context(model: nn.Module, batch: dict):
    """The methods' per-batch context (ReFT positions, per-row adapters)."""
    return methods.batch_context(model, batch)


class BaseTask:
    """Shared parts: token counting for throughput, the mean-loss evaluate, and the hooks' defaults."""

    name = ""
    config_class = None  # a task with settings names its dataclass (validated from the task section)
    run = None  # a task that is not one loss per batch (PPO, GRPO) defines run(...) and trains in it instead

    def load_preprocessor(self, run_cfg):
        """What `prepare` gets: the base model's tokenizer (an image task returns its image processor)."""
        return models.load_tokenizer(run_cfg.model.name)  # looked up on the package: tests replace it there

    def configure_model(self, model: nn.Module, run_cfg) -> None:
        """Check the loaded model against the task (an image head's size); nothing by default."""

    def configure_method(self, method_cfg, model):
        """The method config to train with (a new classifier head added to modules_to_save); as given by default."""
        return method_cfg

    def data_report(self) -> dict:
        """What became of the data per split ({records, examples, dropped, truncated}; train/data_report.py)."""
        return {}

    def data_notes(self) -> list[str]:
        """Rows the task skipped or cut, told again at the end of the run."""
        return []

    def export(self, model: nn.Module, tokenizer, run_cfg, output_dir):
        """Extra artefacts after the adapter is saved (a sentence-transformers folder): their path, or None."""
        return None

    # Self-training (train/self_training.py): a task that declares `self_trains = True` implements
    # encode_unlabeled and logits; the other hooks have working defaults.
    self_trains = False
    labels: tuple = ()  # class names in head-output order, for a task that classifies

    def read_unlabeled(self, run_cfg, settings):
        """The unlabelled records and their source name: by default the rows of `settings.unlabeled` (an image
        task reads its own kind of source)."""
        from ...data.sources import read_source

        return read_source(settings.unlabeled, split=settings.split, revision=run_cfg.data.revision)

    def encode_unlabeled(self, records: list, tokenizer, run_cfg, source=None) -> tuple[list[dict], list]:
        """Self-training's pool: (examples, hidden label ids or None per record)."""
        raise NotImplementedError(f"task {self.name!r} does not self-train")

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(batch, classes) scores, for a task that classifies."""
        raise NotImplementedError(f"task {self.name!r} has no class scores")

    def example_key(self, example: dict):
        """What the model sees of an example, hashable: pool records equal to a labelled one are left out. None
        (the default) keeps every pool record."""
        return None

    def pseudo_example(self, example: dict, label: int) -> dict:
        """How a pool example trains under its pseudo-label (an image task turns augmentation on)."""
        return {**example, "label": label}

    def example_length(self, example: dict) -> int | None:
        """An example's cost in tokens, for a length-grouped order (train.group_by_length): its input_ids by
        default; None for a task whose examples have none (grouping is then refused)."""
        ids = example.get("input_ids") if isinstance(example, dict) else None
        return len(ids) if ids is not None else None

    def num_tokens(self, batch: dict) -> int:
        """Real (non-padding) input tokens, for tokens/s: the collate's own count when it gives one (packed
        rows cannot be told from padding by their mask), else the 2-D attention mask, else every position."""
        if "num_tokens" in batch:
            return int(batch["num_tokens"])
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            return int(mask.sum())
        return int(batch["input_ids"].numel())

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        """eval_loss = total loss / total targets over all batches; perplexity = exp(eval_loss)."""
        total, count = 0.0, 0
        for batch in batches:
            with batch_context(model, batch):
                total += float(self.loss_sum(model, batch))
            count += int(self.num_targets(batch))
        if count == 0:
            return {}
        mean = total / count
        return {"eval_loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf}

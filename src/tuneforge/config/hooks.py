"""Settings of what a run reports to and lets the user attach (train.report_to, callbacks, early stopping,
save_best, NEFTune). Plain data, kept apart from schema.py's TrainConfig, which only holds the fields and calls
`validate_hooks` from its own validate()."""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Literal

from ..errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb")
# save_best / early stopping mode "auto": these names fall (loss, perplexity, error rates); anything else rises
_FALLING = ("loss", "perplexity", "error", "wer", "cer")


def metric_mode(metric: str, mode: str) -> str:
    """'min' or 'max' for a metric; mode 'auto' decides by the name (Hugging Face's Trainer rule, widened)."""
    if mode != "auto":
        return mode
    words = re.split(r"[^a-z0-9]+", metric.lower())  # whole words: "eval_lowercase_share" is not a "wer"
    return "min" if any(word in words for word in _FALLING) else "max"


@dataclasses.dataclass
class WandbConfig:
    """Weights & Biases run settings (with `wandb` in train.report_to)."""

    project: str | None = None
    """W&B project the run is logged to; null = WANDB_PROJECT, else tuneforge."""

    name: str | None = None
    """Display name of the run; null = WANDB_NAME, else the output_dir's folder name."""

    entity: str | None = None
    """Team or user owning the project; null = the logged-in default."""

    group: str | None = None
    """Group runs together (e.g. the jobs of one sweep)."""

    tags: list[str] = dataclasses.field(default_factory=list)
    """Free-form tags shown on the run."""

    mode: Literal["offline", "online", "disabled"] | None = None
    """offline (files under output_dir/wandb, `wandb sync` uploads them later), online or disabled. null: the
    WANDB_MODE environment variable when set, else online if WANDB_API_KEY is set, else offline, so nothing
    leaves the machine unless W&B was set up."""


@dataclasses.dataclass
class EarlyStoppingConfig:
    """Stop training when an eval metric stops improving (needs train.eval_every)."""

    metric: str = "eval_loss"
    """Eval metric to watch, as the task reports it (SFT: eval_loss, perplexity; classify: accuracy, ...)."""

    patience: int = 3
    """Evaluations in a row without improvement before training stops."""

    mode: Literal["auto", "min", "max"] = "auto"
    """min: lower is better; max: higher is better; auto: min for losses/perplexity/error rates, else max."""

    min_delta: float = 0.0
    """An evaluation counts as an improvement only when it beats the best by more than this."""

    def validate(self) -> None:
        if not self.metric:
            raise ConfigError("early_stopping.metric must name an eval metric", key="metric")
        if self.patience < 1:
            raise ConfigError("patience must be at least 1", key="patience")
        if self.min_delta < 0:
            raise ConfigError("min_delta must not be negative", key="min_delta")


def _import(name: str):
    """import_module, also finding modules in the working directory (the `tuneforge` script's own folder is
    what Python puts on sys.path, not the folder a user runs it from)."""
    import os
    import sys

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        if os.getcwd() in sys.path or "" in sys.path:
            raise
        sys.path.append(os.getcwd())
        return importlib.import_module(name)


def resolve_callback(spec: str):
    """The class named by 'package.module:Class' (imported now); ConfigError when it cannot be."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"callback {spec!r} must be written 'module:Class' (e.g. my_pkg.hooks:PrintLoss)")
    try:
        module = _import(module_name)
    except ImportError as err:
        raise ConfigError(f"callback {spec!r}: cannot import module {module_name!r} ({err})") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"callback {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise ConfigError(f"callback {spec!r} is not a class or callable")
    return obj


def validate_hooks(train) -> None:
    """The hook and tracking fields of a TrainConfig (called from its validate())."""
    if len(set(train.report_to)) != len(train.report_to):
        raise ConfigError(f"report_to lists a tracker twice: {train.report_to}", key="report_to")
    if train.mlflow_tracking_uri is not None and "mlflow" not in train.report_to:
        raise ConfigError("mlflow_tracking_uri is set but 'mlflow' is not in report_to", key="mlflow_tracking_uri")
    for spec in train.callbacks:
        try:
            resolve_callback(spec)
        except ConfigError as err:
            raise ConfigError(err.message, key="callbacks") from None
    if train.early_stopping is not None and not train.eval_every:
        raise ConfigError("early_stopping needs eval_every (it compares evaluations during training)",
                          key="early_stopping")
    if train.save_best is not None and not train.save_best:
        raise ConfigError("save_best must name an eval metric (or be null)", key="save_best")
    if train.save_best is not None and not train.eval_every:
        raise ConfigError("save_best needs eval_every (without it the only evaluation is the last step's)",
                          key="save_best")
    alpha = train.neftune_noise_alpha
    if alpha is not None and not alpha > 0:
        raise ConfigError("neftune_noise_alpha must be positive (or null to disable NEFTune)",
                          key="neftune_noise_alpha")

"""AdamW parameter groups and the learning-rate schedule.

Why groups: weight decay pulls weights towards zero; on biases, norm gains and other 1-D parameters that only
hurts (a norm gain decayed to zero switches a channel off), so they get `weight_decay = 0` (transformers'
Trainer rule, methods/weight_decay.py). Methods may ask for their own groups (LoRA+ trains B with a larger lr),
through `tuneforge.methods.optimizer_groups`; the no-decay split is applied inside every group they return.
`train.head_learning_rate` and `train.layer_lr_decay` then split the groups by rate (train/lr_groups.py).

Why `transformers.get_scheduler`: the same config then gives the same learning-rate curve as a Hugging Face
Trainer run (users compare the two). It returns a LambdaLR whose state (`last_epoch`, base lrs) is a plain dict,
so the schedule checkpoints and resumes exactly; the multiplier for 0-based optimizer step k depends only on k
and the run length T (HF's formulas):

    warm-up (k < W):  m(k) = k / W                            (W = warmup_steps, or ceil(warmup_ratio * T);
                                                               the first step of a warm-up has lr 0, as in HF)
    then p = (k - W) / max(1, T - W):
        cosine:   m = 0.5 * (1 + cos(pi * p))                 (Loshchilov & Hutter, arXiv:1608.03983)
        linear:   m = max(0, 1 - p)
        constant: m = 1                                       (HF's constant_with_warmup)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..methods import on_optimizer_step as methods_on_optimizer_step
from ..methods import optimizer_groups
from .lr_groups import scale_groups

SCHEDULES = ("cosine", "linear", "constant")


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None = None,
                 layer_decay: float | None = None) -> list[dict]:
    """AdamW groups over the trainable parameters, as `tuneforge.methods.optimizer_groups` makes them (the methods'
    own groups, each split by the weight-decay rule of methods/weight_decay.py), then by the head's own rate and
    the layer-wise decay when set (train/lr_groups.py)."""
    out = [g for g in optimizer_groups(model, lr, weight_decay) if g["params"]]
    if not out:
        raise ConfigError("the model has no trainable parameters; did the method mark any?", key="method")
    return scale_groups(model, out, head_lr, layer_decay)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, arXiv:1711.05101) over `param_groups`, lr and decay from the TrainConfig;
    cfg.optimizer adamw_8bit / paged_adamw_8bit keep its states in 8 bits (tuneforge.quant.optimizers)."""
    groups = param_groups(model, cfg.learning_rate, cfg.weight_decay, getattr(cfg, "head_learning_rate", None),
                          getattr(cfg, "layer_lr_decay", None))
    name = getattr(cfg, "optimizer", "adamw")
    if name != "adamw":
        from ..quant import build_8bit_optimizer

        return build_8bit_optimizer(name, groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def warmup_steps(cfg, total_steps: int) -> int:
    """warmup_steps when set, else ceil(warmup_ratio * total_steps)."""
    if cfg.warmup_steps:
        return int(cfg.warmup_steps)
    return int(math.ceil(float(cfg.warmup_ratio or 0.0) * total_steps))


# our schedule names -> transformers.get_scheduler names (HF's "constant" has no warm-up)
HF_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`transformers.get_scheduler` for cfg.lr_schedule with this run's warm-up and length."""
    from transformers import get_scheduler

    kind = cfg.lr_schedule
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown lr_schedule {kind!r}; choose one of {', '.join(SCHEDULES)}", key="train.lr_schedule")
    return get_scheduler(HF_SCHEDULES[kind], optimizer, num_warmup_steps=warmup_steps(cfg, total_steps),
                         num_training_steps=total_steps)


def sync_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After loading a scheduler state, set each group's lr from this run's schedule at the restored step
    (the same expression LambdaLR uses), so a resume with a different run length follows the new schedule."""
    step = scheduler.last_epoch
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def on_optimizer_step(model: nn.Module) -> None:
    """Let methods act after each optimizer step (Delta-LoRA)."""
    methods_on_optimizer_step(model)

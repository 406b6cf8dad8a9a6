"""An exponential moving average (EMA) of the trained weights (train.ema_decay), evaluated and saved instead of
the last step's weights. Why: the last iterate of a short fine-tune carries the noise of its last few batches; an
average over the recent trajectory is usually a little better and never costs a step (Polyak & Juditsky 1992;
timm's ModelEmaV2, Hugging Face diffusers' EMAModel).

After optimizer update t = 1, 2, ... (the global step), every trained parameter theta has a shadow s:

    s_1 = theta_1,        s_t = d_t s_{t-1} + (1 - d_t) theta_t,        d_t = min(decay, (1 + t) / (10 + t))

The warm-up of d_t (TensorFlow's ExponentialMovingAverage with num_updates) keeps a fine-tune of a few hundred steps
from being pulled back towards the first updates: d_t reaches 0.99 only after ~890 steps. The shadow lives in the
optimizer's per-parameter state (key "ema", the parameter's dtype), so checkpoints keep it and a resumed run
continues the very same average. Training itself never sees it: the live weights follow the same trajectory with
or without an EMA.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

KEY = "ema"


def ema_decay_at(decay: float, step: int) -> float:
    """d_t of the module docstring for optimizer update `step` (1-based)."""
    return min(decay, (1 + step) / (10 + step))


def _params(optimizer: torch.optim.Optimizer):
    for group in optimizer.param_groups:
        yield from group["params"]


@torch.no_grad()
def update_ema(optimizer: torch.optim.Optimizer, decay: float, step: int) -> None:
    """Fold the weights after optimizer update `step` (1-based) into each trained parameter's shadow."""
    weight = 1.0 - ema_decay_at(decay, step)
    for p in _params(optimizer):
        state = optimizer.state[p]
        if KEY not in state or step <= 1:
            state[KEY] = p.detach().clone()
        else:
            state[KEY].lerp_(p.detach(), weight)


def has_ema(optimizer: torch.optim.Optimizer) -> bool:
    return any(KEY in optimizer.state.get(p, {}) for p in _params(optimizer))


@torch.no_grad()
def load_ema(optimizer: torch.optim.Optimizer) -> dict[torch.Tensor, torch.Tensor]:
    """Copy every shadow into its parameter; returns {parameter: its live weights} so `restore` can undo it."""
    live = {}
    for p in _params(optimizer):
        shadow = optimizer.state.get(p, {}).get(KEY)
        if shadow is not None:
            live[p] = p.detach().clone()
            p.copy_(shadow)
    return live


@torch.no_grad()
def restore(live: dict[torch.Tensor, torch.Tensor]) -> None:
    for p, weights in live.items():
        p.copy_(weights)


@contextmanager
def ema_weights(optimizer: torch.optim.Optimizer | None):
    """Inside: the parameters hold their shadows (when there are any); after: the live weights again."""
    live = load_ema(optimizer) if optimizer is not None else {}
    try:
        yield bool(live)
    finally:
        restore(live)

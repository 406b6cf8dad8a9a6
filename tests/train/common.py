"""Shared helpers for the training tests: a tiny Llama with explicit trainable parameters (no methods package
needed), hand-made SFT examples and the real TrainConfig."""
from __future__ import annotations

import random

from tuneforge.config.schema import TrainConfig
from tuneforge.models.tiny import tiny_llama

PAD = 259  # tiny tokenizer's <pad>
TRAINED = ("q_proj", "v_proj", "model.norm")


def make_cfg(**overrides) -> TrainConfig:
    base = dict(micro_batch_size=2, learning_rate=1e-2, max_grad_norm=1.0, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def make_model(seed: int = 0, **overrides):
    """Tiny Llama training only the q/v projections and the final norm (a 1-D parameter, so no-decay is used)."""
    model = tiny_llama(seed=seed, **overrides)
    for name, param in model.named_parameters():
        param.requires_grad_(any(key in name for key in TRAINED))
    return model


def make_examples(n: int, seed: int = 0, lo: int = 6, hi: int = 20) -> list[dict]:
    """Random byte sequences with a prompt of random length masked out (labels -100), like SFT examples."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(256) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out

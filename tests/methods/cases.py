"""The method case table: one row per method (and notable variant). Every row runs through the shared checks
in test_shared_checks.py. Adding a method = its file in src/tuneforge/methods/ + one row here."""
from __future__ import annotations

import dataclasses
from typing import Callable

from tuneforge.models.tiny import tiny_bert, tiny_llama


def lora_count(model, targets=("q_proj", "v_proj"), r=4):
    n = 0
    for name, m in model.named_modules():
        if name.split(".")[-1] in targets and hasattr(m, "in_features"):
            n += r * (m.in_features + m.out_features)
    return n


@dataclasses.dataclass
class Case:
    id: str
    method: str
    fields: dict
    build: Callable = tiny_llama
    expected_trainable: Callable | None = None  # model (before apply) -> int, the method's formula
    identity_init: bool = True  # a fresh adapter leaves outputs unchanged
    mixed_batch: bool = True  # supports per-row adapters in one batch
    inputs: str = "tokens"  # tokens | pixels


CASES: list[Case] = [
    Case("lora", "lora", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("lora-rslora-dropout", "lora", {"r": 4, "use_rslora": True, "lora_dropout": 0.1,
                                          "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("lora-bert", "lora", {"r": 4, "target_modules": ["query", "value"]}, build=tiny_bert,
         expected_trainable=lambda m: lora_count(m, ("query", "value"))),
]

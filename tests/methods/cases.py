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


def out_features(model, targets=("q_proj", "v_proj")):
    """Output sizes of the targeted linear layers (DoRA magnitudes, LoRA-FA's B, VeRA's lambda_b)."""
    return [m.out_features for name, m in model.named_modules()
            if name.split(".")[-1] in targets and hasattr(m, "in_features")]


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


def sizes(model, suffixes, attr="out_features"):
    """Sum of `attr` over the modules whose full name ends with one of the suffixes."""
    return sum(getattr(m, attr) for n, m in model.named_modules() if n.endswith(tuple(suffixes)) and hasattr(m, attr))


def numel(model, keep=lambda name: True):
    """Parameters (tied ones once) whose name passes keep: the count of the methods that train model tensors."""
    return sum(p.numel() for n, p in model.named_parameters() if keep(n))


def bottleneck_count(model, suffixes, m):
    return sum(2 * d * m + m + d for d in [mod.out_features for n, mod in model.named_modules() if n.endswith(tuple(suffixes))])


def tiny_bert_cls():
    return tiny_bert(num_labels=3)


def kv_dim(model):
    """Key/value width per layer (kv heads x head dim): what prefix tuning trains per position and layer."""
    c = model.config
    return getattr(c, "num_key_value_heads", c.num_attention_heads) * (c.hidden_size // c.num_attention_heads)


def reft_count(model, layers, per_layer, r):
    """layers x interventions per layer x (2 r d + r)."""
    return layers * per_layer * (2 * r * model.config.hidden_size + r)


CASES: list[Case] = [
    Case("lora", "lora", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("lora-rslora-dropout", "lora", {"r": 4, "use_rslora": True, "lora_dropout": 0.1,
                                          "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("lora-bert", "lora", {"r": 4, "target_modules": ["query", "value"]}, build=tiny_bert,
         expected_trainable=lambda m: lora_count(m, ("query", "value"))),
    # LoRA variants (tests/methods/test_lora_variants.py holds their oracles)
    Case("dora", "dora", {"r": 4, "target_modules": ["q_proj", "v_proj"]},
         expected_trainable=lambda m: lora_count(m) + sum(out_features(m))),
    Case("dora-bert-dropout", "dora", {"r": 4, "lora_dropout": 0.1, "target_modules": ["query", "value"]},
         build=tiny_bert,
         expected_trainable=lambda m: lora_count(m, ("query", "value")) + sum(out_features(m, ("query", "value")))),
    Case("rslora", "rslora", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("loraplus", "loraplus", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("lora_fa", "lora_fa", {"r": 4, "target_modules": ["q_proj", "v_proj"]},
         expected_trainable=lambda m: 4 * sum(out_features(m))),
    Case("vera", "vera", {"r": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
         expected_trainable=lambda m: sum(o + 8 for o in out_features(m, ("q_proj", "v_proj", "down_proj")))),
    Case("vera-bert", "vera", {"r": 8, "target_modules": ["query", "value"]}, build=tiny_bert,
         expected_trainable=lambda m: sum(o + 8 for o in out_features(m, ("query", "value")))),
    Case("pissa", "pissa", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("pissa-niter", "pissa", {"r": 4, "init_lora_weights": "pissa_niter_2",
                                  "target_modules": ["q_proj", "v_proj"]}, expected_trainable=lora_count),
    Case("delta_lora", "delta_lora", {"r": 4, "update_start_step": 0, "target_modules": ["q_proj", "v_proj"]},
         expected_trainable=lora_count),
    Case("delta_lora-start1", "delta_lora", {"r": 4, "update_start_step": 1, "target_modules": ["q_proj", "v_proj"]},
         expected_trainable=lora_count),
    # IA3, BitFit, selective, freezing, bottleneck adapters (oracles and more in test_ia3.py, test_other_methods.py)
    Case("ia3", "ia3", {}, expected_trainable=lambda m: sizes(m, ["k_proj", "v_proj"]) + sizes(m, ["down_proj"], "in_features")),
    Case("ia3-bert", "ia3", {}, build=tiny_bert,
         expected_trainable=lambda m: sizes(m, ["key", "value"]) + sizes(m, ["output.dense"], "in_features")),
    Case("bitfit", "bitfit", {}, build=tiny_bert_cls, mixed_batch=False,
         expected_trainable=lambda m: numel(m, lambda n: n.endswith(".bias") or n.startswith("classifier."))),
    Case("selective", "selective", {"trainable_patterns": [r".*norm\.weight", r"model\.layers\.1\.mlp\..*"]},
         mixed_batch=False, expected_trainable=lambda m: numel(m, lambda n: "norm.weight" in n or ".1.mlp." in n)),
    Case("full", "full", {}, mixed_batch=False, expected_trainable=numel),
    Case("head_only", "head_only", {}, build=tiny_bert_cls, mixed_batch=False,
         expected_trainable=lambda m: numel(m, lambda n: n.startswith("classifier."))),
    Case("last_k", "last_k", {"k": 1}, mixed_batch=False,  # + model.norm + lm_head, tied to embed_tokens
         expected_trainable=lambda m: numel(m, lambda n: ".layers.1." in n or n in ("model.norm.weight", "model.embed_tokens.weight"))),
    Case("bottleneck-houlsby", "bottleneck", {"config": "houlsby", "reduction_factor": 4},
         expected_trainable=lambda m: bottleneck_count(m, ["o_proj", "down_proj"], 16)),
    Case("bottleneck-pfeiffer-bert", "bottleneck", {"bottleneck_size": 8, "non_linearity": "gelu"}, build=tiny_bert,
         expected_trainable=lambda m: bottleneck_count(m, ["layer.0.output.dense", "layer.1.output.dense"], 8)),
    # input and representation methods (tests/methods/test_prompt_methods.py, test_reft.py hold their oracles)
    Case("prompt_tuning", "prompt_tuning", {"num_virtual_tokens": 4}, identity_init=False,
         expected_trainable=lambda m: 4 * m.config.hidden_size),
    Case("prompt_tuning-bert", "prompt_tuning", {"num_virtual_tokens": 3}, build=tiny_bert, identity_init=False,
         expected_trainable=lambda m: 3 * m.config.hidden_size),
    Case("prefix_tuning", "prefix_tuning", {"num_virtual_tokens": 3}, identity_init=False,
         expected_trainable=lambda m: 3 * m.config.num_hidden_layers * 2 * kv_dim(m)),
    Case("prefix_tuning-projection", "prefix_tuning", {"num_virtual_tokens": 3, "prefix_projection": True,
                                                       "encoder_hidden_size": 16}, identity_init=False,
         expected_trainable=lambda m: 3 * kv_dim(m) + (kv_dim(m) * 16 + 16) + (16 + 1) * 2 * m.config.num_hidden_layers * kv_dim(m)),
    Case("loreft", "loreft", {"low_rank_dimension": 4}, identity_init=False,
         expected_trainable=lambda m: reft_count(m, 2, 2, 4)),
    Case("loreft-shared-one-layer", "loreft", {"low_rank_dimension": 2, "layers": [1], "positions": "f2+l2",
                                               "share_weights": True}, identity_init=False,
         expected_trainable=lambda m: reft_count(m, 1, 1, 2)),
    Case("loreft-bert", "loreft", {"low_rank_dimension": 2, "first_n": 2, "last_n": 0}, build=tiny_bert,
         identity_init=False, expected_trainable=lambda m: reft_count(m, 2, 1, 2)),
    Case("direft", "direft", {"low_rank_dimension": 4, "positions": "l3"}, identity_init=False,
         expected_trainable=lambda m: reft_count(m, 2, 1, 4)),
]

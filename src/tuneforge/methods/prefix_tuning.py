"""Prefix tuning: N trained key/value pairs in front of every layer's attention, the whole network frozen.

    attention_l(x) = softmax(q [K_l^prefix ; K_l(x)]^T / sqrt(d_head)) [V_l^prefix ; V_l(x)]
    trainable: N * L * 2 * d_kv                         (d_kv = kv heads x head dim)
    with prefix_projection: [K ; V] = MLP(E), E in R^{N x d_kv}, MLP = Linear(d_kv, h) tanh Linear(h, 2 L d_kv)
    trainable: N d_kv + (d_kv h + h) + (h 2 L d_kv + 2 L d_kv)

Li and Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
https://arxiv.org/abs/2101.00190 (the MLP reparameterisation is their remedy for unstable training). Built as
peft: the prefix prefills a transformers `DynamicCache` on the first forward of a sequence, the mask grows by
N and positions start at N (see `_virtual_tokens`). Files are peft's: one tensor `prompt_embeddings`
(N, 2 L d_kv) holding the prefix itself (the MLP's output when projected; the MLP is not saved, so a loaded
projected adapter holds its prefix directly, as in peft). Prefix tuning writes into the cache inside each
layer, so activation checkpointing (which replays layers) cannot be used with it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from ..errors import AdapterMismatch, ConfigError
from ..models.state_copy import copy_checked
from ..registry import METHODS
from ._hooks import text_config
from ._virtual_tokens import VirtualTokenConfig, VirtualTokenMethod, batch_of_rows, fill_from_model
from .base import check


@dataclasses.dataclass
class PrefixTuningConfig(VirtualTokenConfig):
    """Prefix tuning: the shared virtual-token fields (N, shapes filled from the model) and the optional MLP."""

    method = "prefix_tuning"
    prefix_projection: bool = False
    """Produce the prefix with a two-layer tanh MLP from N smaller embeddings (the paper's
    reparameterisation); False trains the prefix directly."""
    encoder_hidden_size: Optional[int] = None
    """Hidden width h of that MLP; the key/value width d_kv when left empty."""
    init_weights: Optional[str] = None
    """None: N(0, 1) prefix (peft's default). "zero": zero prefix (zero last MLP layer when projected)."""

    def validate(self) -> None:
        super().validate()
        check(self.init_weights in (None, "zero"), "init_weights", "init_weights must be null or 'zero'")
        check(self.encoder_hidden_size is None or self.encoder_hidden_size > 0, "encoder_hidden_size",
              "encoder_hidden_size must be positive")


class PrefixEncoder(nn.Module):
    """N trained prefix vectors of width 2 L d_kv, or N embeddings of width d_kv through the MLP (peft's
    PrefixEncoder, same parameter names)."""

    def __init__(self, cfg: PrefixTuningConfig):
        super().__init__()
        width = cfg.num_layers * 2 * cfg.token_dim
        self.prefix_projection = cfg.prefix_projection and not cfg.inference_mode
        if self.prefix_projection:
            self.embedding = nn.Embedding(cfg.num_virtual_tokens, cfg.token_dim)
            self.transform = nn.Sequential(
                nn.Linear(cfg.token_dim, cfg.encoder_hidden_size), nn.Tanh(), nn.Linear(cfg.encoder_hidden_size, width)
            )
            if cfg.init_weights == "zero":
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = nn.Embedding(cfg.num_virtual_tokens, width)
            if cfg.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def forward(self) -> torch.Tensor:
        """The prefix, (N, 2 L d_kv): per position, layer-major, key before value, heads then head dim."""
        if self.prefix_projection:
            return self.transform(self.embedding.weight)
        return self.embedding.weight


def kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


@METHODS.register("prefix_tuning")
class PrefixTuning(VirtualTokenMethod):
    name = "prefix_tuning"
    config_class = PrefixTuningConfig
    paper = "https://arxiv.org/abs/2101.00190"
    formula = "num_virtual_tokens * num_layers * 2 * kv_dim (+ the MLP with prefix_projection)"
    peft_type = "PREFIX_TUNING"
    holder_attr = "prefix_encoder"

    def build(self, model, cfg: PrefixTuningConfig) -> nn.Module:
        config = text_config(model)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        fill_from_model(cfg, {"token_dim": kv_heads(config) * head_dim, "num_layers": config.num_hidden_layers,
                              "num_attention_heads": kv_heads(config)})
        if cfg.encoder_hidden_size is None:
            cfg.encoder_hidden_size = cfg.token_dim
        return PrefixEncoder(cfg).to(next(model.parameters()).device)

    def num_tokens(self, module: PrefixEncoder) -> int:
        return module.embedding.num_embeddings

    def inject(self, backbone, kw, rows, counts, n_slots, prefill, real_pos):
        if real_pos is not None:
            kw["position_ids"] = real_pos
        if not prefill:
            return
        if torch.is_grad_enabled() and backbone.training and getattr(backbone, "gradient_checkpointing", False):
            raise ConfigError("prefix tuning writes its prefix into the key/value cache, which activation "
                              "checkpointing replays; set train.gradient_checkpointing: false",
                              key="train.gradient_checkpointing")
        from transformers import DynamicCache

        pieces = {n: backbone.prefix_encoder[n]() for r in rows for n in r}
        prefix = batch_of_rows(rows, pieces, n_slots, dim=0)  # (B, N, 2 L d_kv)
        config = text_config(backbone)
        num_layers = config.num_hidden_layers
        dtype = backbone.get_input_embeddings().weight.dtype
        prefix = prefix.to(dtype).view(len(rows), n_slots, num_layers * 2, kv_heads(config), -1).permute(2, 0, 3, 1, 4)
        cache = kw.get("past_key_values")
        if cache is None:
            cache = DynamicCache(config=config)
            kw["past_key_values"] = cache
        for layer in range(num_layers):
            cache.update(prefix[2 * layer], prefix[2 * layer + 1], layer)

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.holder(model)[adapter_name]().detach()}

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        encoder = self.holder(model)[adapter_name]
        if set(state) != {"prompt_embeddings"}:
            raise AdapterMismatch(f"a prefix tuning adapter holds exactly 'prompt_embeddings', got {sorted(state)}")
        if encoder.prefix_projection:
            raise AdapterMismatch("a saved prefix cannot be loaded into an adapter with its MLP; "
                                  "load it with inference_mode: true")
        copy_checked(encoder.embedding.weight, state["prompt_embeddings"], "prompt_embeddings")

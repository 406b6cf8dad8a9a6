"""Prompt tuning: N trained embeddings P in front of every input, the whole network frozen.

    backbone([P_1 .. P_N, E(x_1) .. E(x_T)])[N:]        trainable: N x d

Lester, Al-Rfou and Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691. Initialisation as peft: RANDOM (N(0, 1) like nn.Embedding), SAMPLE_VOCAB
(embeddings of N tokens drawn from the vocabulary) or TEXT (embeddings of a text's tokens, cut or repeated to N;
the paper's best). The prompt is prepended by a hook on the backbone and stripped from its output, so callers
see their own sequence length; `generate` gets it on the prefill step only (see `_virtual_tokens`). Files are
peft's: one tensor `prompt_embeddings` (N, d), peft_type PROMPT_TUNING.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import nn

from ..errors import AdapterMismatch
from ..models.state_copy import copy_checked
from ..registry import METHODS
from ._hooks import backbone_of, text_config
from ._virtual_tokens import VirtualTokenConfig, VirtualTokenMethod, batch_of_rows, fill_from_model
from .base import check

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


@dataclasses.dataclass
class PromptTuningConfig(VirtualTokenConfig):
    """Prompt tuning: the shared virtual-token fields (N, shapes filled from the model) and its initialisation."""

    method = "prompt_tuning"
    prompt_tuning_init: str = "RANDOM"
    """RANDOM: N(0, 1). SAMPLE_VOCAB: embeddings of random vocabulary tokens. TEXT: embeddings of
    prompt_tuning_init_text, cut or repeated to N tokens."""
    prompt_tuning_init_text: Optional[str] = None
    """The text whose token embeddings start the prompt (TEXT init)."""
    tokenizer_name_or_path: Optional[str] = None
    """Tokenizer for the TEXT init: a packaged alias, a local directory or a hub id."""

    def validate(self) -> None:
        super().validate()
        check(str(self.prompt_tuning_init) in INITS, "prompt_tuning_init",
              f"prompt_tuning_init must be one of {', '.join(INITS)}, got {self.prompt_tuning_init!r}")
        if str(self.prompt_tuning_init) == "TEXT" and not self.inference_mode:
            check(bool(self.prompt_tuning_init_text), "prompt_tuning_init_text",
                  "prompt_tuning_init TEXT needs prompt_tuning_init_text")
            check(bool(self.tokenizer_name_or_path), "tokenizer_name_or_path",
                  "prompt_tuning_init TEXT needs tokenizer_name_or_path")


class PromptEmbedding(nn.Module):
    """The N trained prompt vectors of one adapter (peft's PromptEmbedding, same parameter name)."""

    def __init__(self, cfg: PromptTuningConfig, word_embeddings: nn.Module):
        super().__init__()
        self.embedding = nn.Embedding(cfg.num_virtual_tokens, cfg.token_dim)
        init = str(cfg.prompt_tuning_init)
        if cfg.inference_mode or init == "RANDOM":
            return
        weight = word_embeddings.weight
        if init == "SAMPLE_VOCAB":
            ids = torch.randint(0, weight.shape[0], (cfg.num_virtual_tokens,), dtype=torch.long)
        else:
            from ..models import load_tokenizer

            text_ids = load_tokenizer(cfg.tokenizer_name_or_path)(cfg.prompt_tuning_init_text)["input_ids"]
            ids = torch.tensor((text_ids * math.ceil(cfg.num_virtual_tokens / len(text_ids)))[: cfg.num_virtual_tokens])
        with torch.no_grad():
            self.embedding.weight.copy_(word_embeddings(ids.to(weight.device)).float())

    def forward(self) -> torch.Tensor:
        return self.embedding.weight


@METHODS.register("prompt_tuning")
class PromptTuning(VirtualTokenMethod):
    name = "prompt_tuning"
    config_class = PromptTuningConfig
    paper = "https://arxiv.org/abs/2104.08691"
    formula = "num_virtual_tokens * hidden_size"
    peft_type = "PROMPT_TUNING"
    holder_attr = "prompt_encoder"

    def build(self, model, cfg: PromptTuningConfig) -> nn.Module:
        config = text_config(model)
        fill_from_model(cfg, {"token_dim": config.hidden_size, "num_layers": config.num_hidden_layers,
                              "num_attention_heads": config.num_attention_heads})
        words = backbone_of(model).get_input_embeddings()
        return PromptEmbedding(cfg, words).to(words.weight.device)

    def num_tokens(self, module: PromptEmbedding) -> int:
        return module.embedding.num_embeddings

    def inject(self, backbone, kw, rows, counts, n_slots, prefill, real_pos):
        if real_pos is not None and not prefill:
            kw["position_ids"] = real_pos
        if not prefill:
            return
        embeds = kw.pop("inputs_embeds", None)
        if embeds is None:
            embeds = backbone.get_input_embeddings()(kw["input_ids"])
        kw["input_ids"] = None
        holder = backbone.prompt_encoder
        pieces = {n: holder[n]() for r in rows for n in r}
        prompts = batch_of_rows(rows, pieces, n_slots, dim=0).to(embeds.dtype)
        kw["inputs_embeds"] = torch.cat([prompts, embeds], dim=1)
        if real_pos is not None:
            slot_pos = torch.arange(n_slots, device=counts.device)[None] - (n_slots - counts)[:, None]
            kw["position_ids"] = torch.cat([slot_pos.clamp(min=0), real_pos.expand(len(rows), -1)], dim=1)
        if kw.get("token_type_ids") is not None:
            tt = kw["token_type_ids"]
            kw["token_type_ids"] = torch.cat([tt.new_zeros(tt.shape[0], n_slots), tt], dim=1)
        backbone._tuneforge_virtual.strip = n_slots

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.holder(model)[adapter_name]().detach()}

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        weight = self.holder(model)[adapter_name].embedding.weight
        if set(state) != {"prompt_embeddings"}:
            raise AdapterMismatch(f"a prompt tuning adapter holds exactly 'prompt_embeddings', got {sorted(state)}")
        copy_checked(weight, state["prompt_embeddings"], "prompt_embeddings")

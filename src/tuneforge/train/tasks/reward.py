"""Reward model: a scalar head on a sequence model, trained on preference pairs with the Bradley-Terry loss.

    r(x, y) = w . h_last(x + y)                  (the model's sequence-classification head, num_labels = 1)
    loss_sum = sum_pairs -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

Bradley & Terry (1952); used for RLHF reward models by Ouyang et al. 2022, https://arxiv.org/abs/2203.02155.
A decoder LM loaded with `model.kind: sequence-classification, model.num_labels: 1` pools its last non-padding
token (transformers' *ForSequenceClassification). Replies carry no end-of-turn token here, so that token is the
reply's own last token whatever the pad id is. The head is new, so it must train and be saved with the adapter:
`configure_method` fills an empty `modules_to_save` with it, and the first loss raises if it still does not train.

Metrics: pairwise accuracy (share of pairs with r_chosen > r_rejected), mean margin r_chosen - r_rejected, mean
chosen / rejected scores, eval_loss (mean Bradley-Terry loss).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...registry import TASKS
from .base import batch_context
from .preference import PreferenceConfig, PreferenceTask, load_preferences

HEAD_MODULES = ("score", "classifier")


@TASKS.register("reward")
class RewardTask(PreferenceTask):
    """Pairwise (Bradley-Terry) reward modelling on {prompt, chosen, rejected} records."""

    name = "reward"

    def __init__(self):
        super().__init__()
        self._head_checked = False

    def configure_method(self, method_cfg, model):
        """Train and save the new head with the adapter: fill an empty `modules_to_save` with the head's name."""
        heads = [name for name in HEAD_MODULES if isinstance(getattr(model, name, None), nn.Module)]
        if heads and method_cfg.can_save_modules() and method_cfg.modules_to_save is None:
            return method_cfg.replace(modules_to_save=heads[:1])
        return method_cfg

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        model = run_cfg.model
        if model.kind != "sequence-classification" or model.num_labels != 1:
            raise ConfigError("a reward model is a scalar head: set model.kind: sequence-classification and "
                              "model.num_labels: 1", key="model.kind")
        self.cfg = run_cfg.task_config or PreferenceConfig()
        return load_preferences(self, run_cfg, tokenizer, append_eos=False)

    def scores(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_chosen, r_rejected), one scalar per pair. Padding is given the model's own pad id, which is how
        its head finds the last real token."""
        pad = getattr(model.config, "pad_token_id", None)
        ids = batch["input_ids"]
        if pad is not None and pad != self.pad_token_id:
            ids = ids.masked_fill(batch["attention_mask"] == 0, pad)
        rewards = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.float().squeeze(-1)
        return rewards.chunk(2)

    def _check_head(self, model: nn.Module) -> None:
        heads = [getattr(model, name) for name in HEAD_MODULES if isinstance(getattr(model, name, None), nn.Module)]
        if heads and not any(p.requires_grad for p in heads[0].parameters()):
            raise ConfigError("the reward head is new and random but does not train; add the head to the method "
                              "(modules_to_save: [score]) or use a method that trains it", key="method")
        self._head_checked = True

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if not self._head_checked and torch.is_grad_enabled():
            self._check_head(model)
        chosen, rejected = self.scores(model, batch)
        return -F.logsigmoid(chosen - rejected).sum()

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        chosen, rejected = [], []
        for batch in batches:
            with batch_context(model, batch):
                c, r = self.scores(model, batch)
            chosen.append(c)
            rejected.append(r)
        if not chosen:
            return {}
        c, r = torch.cat(chosen), torch.cat(rejected)
        margin = c - r
        return {
            "eval_loss": float(-F.logsigmoid(margin).mean()),
            "pairwise_accuracy": float((margin > 0).float().mean()),
            "mean_margin": float(margin.mean()),
            "chosen_score": float(c.mean()),
            "rejected_score": float(r.mean()),
            "eval_pairs": int(c.numel()),
        }

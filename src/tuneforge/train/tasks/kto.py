"""KTO (Kahneman-Tversky optimisation, Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306): preference
learning from single replies labelled desirable or undesirable, no pairs needed.

With r = log pi(y|x) - log pi_ref(y|x) (summed over reply tokens; pi_ref = the model with its adapter disabled)
and z_ref = max(0, mean over the batch of the same log-ratio on mismatched (x_i, y_{i-1}) rows), detached:

    desirable:    w_d (1 - sigmoid(beta (r - z_ref)))
    undesirable:  w_u (1 - sigmoid(beta (z_ref - r)))

averaged over the examples (eq. 7-8 of the paper, as TRL's KTOTrainer computes it; the tests check it against
TRL's code). Data: see `tuneforge.data.unpaired` ({prompt, completion, label} rows, or pairs split in two). A
split with only one kind of label is an error before training. A validation file of pairs is scored like DPO:
the implicit reward beta r of chosen against rejected (reward_accuracy), so KTO's figures sit next to DPO's.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, DataError
from ...registry import TASKS
from .base import batch_context
from .dpo import completion_logps
from .preference import PreferenceConfig, PreferenceTask, check_pair_loss, check_prompt_budget


@dataclasses.dataclass
class KTOConfig(PreferenceConfig):
    beta: float = 0.1
    """Strength of the pull towards the reference, as DPO's beta."""

    desirable_weight: float = 1.0
    """w_d: weight of desirable examples (raise it when they are fewer; the paper keeps
    w_d n_d / (w_u n_u) in [1, 4/3])."""

    undesirable_weight: float = 1.0
    """w_u: weight of undesirable examples."""

    completion_field: str = "completion"
    """Unpaired rows: the field holding the reply."""

    label: str = "label"
    """Unpaired rows: the field holding the desirability (true/false, 1/0, or text equal to positive_label)."""

    def validate(self) -> None:
        super().validate()
        check_pair_loss(self.beta)
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ConfigError("desirable_weight and undesirable_weight must be positive", key="desirable_weight")
        if self.label_field is not None:
            raise ConfigError("KTO reads labelled rows itself: set task.label (the label's field), not label_field",
                              key="label_field")


def kto_loss(policy_logps, ref_logps, desirable, kl, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """(per-example losses, implicit rewards beta r) from summed log-probs; kl is z_ref (a detached scalar)."""
    ratio = policy_logps - ref_logps
    chosen = 1 - F.sigmoid(beta * (ratio - kl))
    rejected = 1 - F.sigmoid(beta * (kl - ratio))
    losses = torch.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)
    return losses, beta * ratio.detach()


def _rows(batch: dict, rows: slice) -> dict:
    return {k: batch[k][rows] for k in ("input_ids", "attention_mask", "completion_mask")}


@TASKS.register("kto")
class KTOTask(PreferenceTask):
    """KTO on desirable / undesirable replies, the reference being the model with adapters disabled."""

    name = "kto"
    config_class = KTOConfig

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        from ...data import read_records, select_records
        from ...data.preferences import build_pairs
        from ...data.unpaired import build_unpaired

        self.cfg = cfg = run_cfg.task_config or KTOConfig()
        data = run_cfg.data
        if data.train is None:
            raise ConfigError("KTO needs a data file", key="data.train")
        check_prompt_budget(cfg, data.max_length)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        options = dict(template=cfg.template, max_length=data.max_length, max_prompt_length=cfg.max_prompt_length)
        records = select_records(read_records(data.train), data.limit_train, data.shuffle_seed)
        train, stats = build_unpaired(records, tokenizer, completion_field=cfg.completion_field, label_field=cfg.label,
                                      positive_label=cfg.positive_label, source=data.train, **options)
        if not stats.desirable or not stats.undesirable:
            raise DataError(f"KTO needs both desirable and undesirable examples; {stats.summary()}", file=data.train)
        self.pair_stats = [stats]
        evals = []
        if data.validation is not None:
            records = select_records(read_records(data.validation), data.limit_eval, data.shuffle_seed)
            if records and "chosen" in records[0] and "rejected" in records[0]:
                evals, vstats = build_pairs(records, tokenizer, append_eos=True, source=data.validation,
                                            split="validation", **options)
            else:
                evals, vstats = build_unpaired(records, tokenizer, completion_field=cfg.completion_field,
                                               label_field=cfg.label, positive_label=cfg.positive_label,
                                               source=data.validation, split="validation", **options)
            if not evals:
                raise DataError(f"no usable validation examples: {vstats.summary()}", file=data.validation)
            self.pair_stats.append(vstats)
        for line in self.data_notes():
            print(line)
        return train, evals

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from ...data.preferences import collate_pairs
        from ...data.unpaired import collate_unpaired

        if "chosen_ids" in examples[0]:
            return collate_pairs(examples, self.pad_token_id)
        return collate_unpaired(examples, self.pad_token_id)

    def num_targets(self, batch: dict) -> int:
        if "desirable" in batch:
            return int(batch["desirable"].shape[0])
        return int(batch["input_ids"].shape[0])  # pairs: each side is one example

    def _check(self, model):
        from ...methods import list_adapters

        if not list_adapters(model):
            raise ConfigError("KTO's reference is the model with its adapter disabled; this model has no adapter",
                              key="method")

    def terms(self, model: nn.Module, batch: dict):
        """(per-example losses, implicit rewards, z_ref) of an unpaired batch."""
        from ...methods import disable_adapters

        self._check(model)
        n = int(batch["desirable"].shape[0])
        main, mismatched = _rows(batch, slice(0, n)), _rows(batch, slice(n, 2 * n))
        logps, _ = completion_logps(model, main)
        with torch.no_grad():
            kl_logps, _ = completion_logps(model, mismatched)
            with disable_adapters(model):
                ref_logps, _ = completion_logps(model, main)
                ref_kl_logps, _ = completion_logps(model, mismatched)
        kl = (kl_logps - ref_kl_logps).mean().clamp(min=0)
        losses, rewards = kto_loss(logps, ref_logps, batch["desirable"], kl, beta=self.cfg.beta,
                                   desirable_weight=self.cfg.desirable_weight,
                                   undesirable_weight=self.cfg.undesirable_weight)
        return losses, rewards, kl

    def pair_terms(self, model: nn.Module, batch: dict):
        """Validation pairs: (KTO losses of chosen as desirable and rejected as undesirable with z_ref = 0,
        chosen rewards, rejected rewards, (policy log-prob sums, reply token counts))."""
        from ...methods import disable_adapters

        self._check(model)
        logps, counts = completion_logps(model, batch)
        with disable_adapters(model):
            ref_logps, _ = completion_logps(model, batch)
        half = logps.shape[0] // 2
        desirable = torch.arange(logps.shape[0], device=logps.device) < half
        losses, rewards = kto_loss(logps, ref_logps, desirable, torch.zeros((), device=logps.device),
                                   beta=self.cfg.beta, desirable_weight=self.cfg.desirable_weight,
                                   undesirable_weight=self.cfg.undesirable_weight)
        return losses, rewards[:half], rewards[half:], (logps.detach(), counts)

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if "desirable" not in batch:
            return self.pair_terms(model, batch)[0].sum()
        return self.terms(model, batch)[0].sum()

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        """Pair batches (the validation split stays paired) as the other preference tasks; unpaired batches add
        desirable_reward, undesirable_reward and kl, and their losses to eval_loss."""
        batches = list(batches)
        out = self.evaluate_pairs(model, [b for b in batches if "desirable" not in b])
        losses, good, bad, kls = [], [], [], []
        for batch in (b for b in batches if "desirable" in b):
            with batch_context(model, batch), torch.no_grad():
                loss, rewards, kl = self.terms(model, batch)
            losses.append(loss)
            good.append(rewards[batch["desirable"]])
            bad.append(rewards[~batch["desirable"]])
            kls.append(float(kl))
        if losses:
            loss, g, b = torch.cat(losses), torch.cat(good), torch.cat(bad)
            paired = 2 * out.get("eval_pairs", 0)  # one KTO loss per reply of each pair
            out["eval_loss"] = (out.get("eval_loss", 0.0) * paired + float(loss.sum())) / (paired + loss.numel())
            out.update({"desirable_reward": float(g.mean()) if g.numel() else float("nan"),
                        "undesirable_reward": float(b.mean()) if b.numel() else float("nan"),
                        "kl": sum(kls) / len(kls)})
        return out

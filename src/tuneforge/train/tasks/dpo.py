"""Direct Preference Optimization: fit the policy to preference pairs with no reward model and no sampling.

With pi the policy (the model with its adapter) and pi_ref the reference (the same model with the adapter
disabled, so no second copy of the weights is held), log-probabilities summed over the reply tokens:

    d = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]
    sigmoid:  loss = -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)
    ipo:      loss = (d_avg - 1 / (2 beta))^2,  d_avg as d with each log-ratio divided by its reply's token count
    rpo_alpha > 0 adds rpo_alpha * (-log pi(y_c|x) / |y_c|) to each pair's loss (RPO, Pang et al. 2024,
    https://arxiv.org/abs/2404.19733; TRL's rpo_alpha pools the NLL over the batch's tokens, here it is per pair)

DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290 (eq. 7). eps > 0 is the conservative DPO of
Mitchell 2023 ("A note on DPO with noisy preferences": each label is flipped with probability eps). IPO: Azar
et al. 2023, https://arxiv.org/abs/2310.12036 (eq. 17), length-normalised as TRL does and as its authors
confirmed. The implicit reward of a reply is beta (log pi - log pi_ref); metrics report its pairwise accuracy
(chosen > rejected), the mean chosen / rejected rewards and their margin.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...registry import TASKS
from .preference import PreferenceConfig, PreferenceTask, check_pair_loss, load_preferences
from .sft import fused_head_parts


@dataclasses.dataclass
class DPOConfig(PreferenceConfig):
    beta: float = 0.1
    """Strength of the pull towards the reference: higher keeps the policy closer to it (DPO's beta, IPO's tau)."""

    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid (DPO) or ipo (squared loss towards a fixed margin; does not overfit deterministic preferences)."""

    label_smoothing: float = 0.0
    """Assumed share of flipped labels (conservative DPO); 0 is plain DPO. Only for loss_type sigmoid."""

    rpo_alpha: float = 0.0
    """Weight of a negative log-likelihood term on the chosen reply (per token, per pair) added to each pair's
    loss: RPO (Pang et al. 2024, TRL's rpo_alpha; 1.0 is their value). DPO alone only has to widen the gap, and
    often does it by lowering both replies; the NLL term puts the mass on the chosen ones, which is what moves
    greedy generation when the pairs are not the policy's own samples. 0 is plain DPO."""

    def validate(self) -> None:
        super().validate()
        check_pair_loss(self.beta, self.label_smoothing, self.loss_type)
        if self.rpo_alpha < 0:
            raise ConfigError("rpo_alpha must be 0 or positive", key="rpo_alpha")


def selected_outputs(model: nn.Module, inputs: dict, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states, LM logits) at the positions where `select` (batch x seq, bool) is true. Only those
    positions go through the vocabulary projection (see the SFT task on why)."""
    parts = fused_head_parts(model)
    if parts is not None:
        base, head = parts
        hidden = base(**inputs, use_cache=False).last_hidden_state[select]
        return hidden, head(hidden)
    out = model(**inputs, use_cache=False, output_hidden_states=True)
    return out.hidden_states[-1][select], out.logits[select]


def completion_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log pi(token) over each row's reply tokens, number of reply tokens), one value per row."""
    ids, completion = batch["input_ids"], batch["completion_mask"]
    select = completion[:, 1:].bool()
    select = torch.cat([select, torch.zeros_like(select[:, :1])], dim=1)  # logits at t predict token t + 1
    _, logits = selected_outputs(model, {"input_ids": ids, "attention_mask": batch["attention_mask"]}, select)
    targets = ids[:, 1:][completion[:, 1:].bool()]
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(select)[select]
    sums = torch.zeros(ids.shape[0], device=ids.device, dtype=torch.float32).index_add(0, rows, token_logps)
    return sums, completion[:, 1:].sum(dim=1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_tokens=None, rejected_tokens=None):
    """Per-pair losses and implicit rewards (beta * log-ratio) of chosen and rejected, from summed log-probs."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        logits = beta * (chosen_ratio - rejected_ratio)
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the reply token counts")
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ConfigError(f"unknown loss_type {loss_type!r}; choose sigmoid or ipo", key="task.loss_type")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@TASKS.register("dpo")
class DPOTask(PreferenceTask):
    """DPO / IPO on {prompt, chosen, rejected} records, the reference being the model with adapters disabled."""

    name = "dpo"
    config_class = DPOConfig

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        self.cfg = run_cfg.task_config or DPOConfig()
        return load_preferences(self, run_cfg, tokenizer, append_eos=True)

    def pair_terms(self, model: nn.Module, batch: dict):
        """(per-pair losses, chosen rewards, rejected rewards, (policy log-prob sums, reply token counts))."""
        from ...methods import disable_adapters, list_adapters

        if not list_adapters(model):
            raise ConfigError("DPO's reference is the model with its adapter disabled; this model has no adapter",
                              key="method")
        logps, tokens = completion_logps(model, batch)
        with torch.no_grad(), disable_adapters(model):
            ref_logps, _ = completion_logps(model, batch)
        (pc, pr), (rc, rr), (nc, nr) = logps.chunk(2), ref_logps.chunk(2), tokens.chunk(2)
        losses, c, r = dpo_loss(pc, pr, rc, rr, beta=self.cfg.beta, loss_type=self.cfg.loss_type,
                                label_smoothing=self.cfg.label_smoothing, chosen_tokens=nc, rejected_tokens=nr)
        if self.cfg.rpo_alpha:
            losses = losses - self.cfg.rpo_alpha * pc / nc.clamp(min=1)
        return losses, c, r, (logps.detach(), tokens)

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        losses = self.pair_terms(model, batch)[0]
        return losses.sum()

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        return self.evaluate_pairs(model, batches)

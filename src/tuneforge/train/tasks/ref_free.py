"""Reference-free preference losses on {prompt, chosen, rejected} pairs: ORPO, SimPO and CPO.

None of them runs a reference model (so they work for full fine-tuning as well as adapters). With l_c, l_r the
log-probabilities of the chosen / rejected reply (summed over reply tokens, or averaged where marked avg) and
nll_c = -avg log pi(y_c), per pair:

    orpo:   nll_c - beta log sigmoid(log odds(y_c) - log odds(y_r)),  odds(y) = p / (1 - p), p = exp(l_avg)
            (Hong et al. 2024, https://arxiv.org/abs/2403.07691, eq. 6-7; beta is the paper's lambda)
    simpo:  -log sigmoid(beta (l_c,avg - l_r,avg) - gamma)          (+ sft_weight nll_c)
            (Meng et al. 2024, https://arxiv.org/abs/2405.14734, eq. 6)
    cpo:    -log sigmoid(beta (l_c - l_r)) + cpo_alpha nll_c   (loss_type sigmoid; hinge: relu(1 - beta d);
            label_smoothing as conservative DPO) (Xu et al. 2024, https://arxiv.org/abs/2401.08417, eq. 3-5)

These are TRL's ORPOTrainer.odds_ratio_loss and CPOTrainer.cpo_loss (SimPO = CPO with loss_type simpo), checked
against TRL's code in the tests. One difference, on purpose: TRL's NLL term is a token mean over the whole batch,
which depends on how a step is cut into micro-batches; here it is each pair's own token mean, so every pair
weighs the same and gradient accumulation gives the gradient of one big batch (equal when the chosen replies
have equal length). The implicit reward of a reply is beta l (avg for orpo/simpo); metrics report its pairwise
accuracy like DPO's.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...registry import TASKS
from .dpo import completion_logps
from .preference import PreferenceConfig, PreferenceTask, check_pair_loss, load_preferences


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (branch at -ln 2, Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_avg, rejected_avg, *, beta: float):
    """(-beta log sigmoid(log odds ratio) per pair, implicit rewards beta l_avg of chosen and rejected)."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    return -beta * F.logsigmoid(log_odds), beta * chosen_avg.detach(), beta * rejected_avg.detach()


def cpo_loss(chosen, rejected, *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             gamma: float = 0.0):
    """(per-pair preference losses, implicit rewards beta l of chosen and rejected); l summed (cpo) or averaged
    (simpo) by the caller. simpo: the margin gamma is subtracted from beta d, as TRL's simpo_gamma."""
    d = chosen - rejected
    if loss_type in ("sigmoid", "simpo"):
        logits = beta * d - (gamma if loss_type == "simpo" else 0.0)
        losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * d)
    else:
        raise ConfigError(f"unknown loss_type {loss_type!r}; choose sigmoid or hinge", key="task.loss_type")
    return losses, beta * chosen.detach(), beta * rejected.detach()


@dataclasses.dataclass
class ORPOConfig(PreferenceConfig):
    beta: float = 0.1
    """lambda of the ORPO paper: weight of the odds-ratio term next to the chosen reply's NLL."""

    def validate(self) -> None:
        super().validate()
        check_pair_loss(self.beta)


@dataclasses.dataclass
class SimPOConfig(PreferenceConfig):
    beta: float = 2.0
    """Scale of the length-normalised reward margin (the paper uses 2 to 2.5)."""

    gamma: float = 0.5
    """Target reward margin subtracted from beta d (TRL's simpo_gamma; the paper's gamma)."""

    label_smoothing: float = 0.0
    """Assumed share of flipped labels, as in conservative DPO."""

    sft_weight: float = 0.0
    """Weight of the chosen reply's NLL added to the loss (TRL's cpo_alpha; 0 is plain SimPO)."""

    def validate(self) -> None:
        super().validate()
        check_pair_loss(self.beta, self.label_smoothing)
        if self.sft_weight < 0:
            raise ConfigError("sft_weight must not be negative", key="sft_weight")


@dataclasses.dataclass
class CPOConfig(PreferenceConfig):
    beta: float = 0.1
    """Temperature of the preference term on summed log-probabilities."""

    loss_type: Literal["sigmoid", "hinge"] = "sigmoid"
    """sigmoid (the paper's eq. 3) or hinge (SLiC-style)."""

    label_smoothing: float = 0.0
    """Assumed share of flipped labels (sigmoid only)."""

    cpo_alpha: float = 1.0
    """Weight of the chosen reply's NLL (the behaviour-cloning regulariser of CPO)."""

    def validate(self) -> None:
        super().validate()
        check_pair_loss(self.beta, self.label_smoothing, self.loss_type)
        if self.cpo_alpha < 0:
            raise ConfigError("cpo_alpha must not be negative", key="cpo_alpha")


class RefFreeTask(PreferenceTask):
    """Shared: pair data, one forward of chosen + rejected rows, per-pair losses, DPO-like metrics."""

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        self.cfg = run_cfg.task_config or self.config_class()
        return load_preferences(self, run_cfg, tokenizer, append_eos=True)

    def pair_losses(self, sums, counts):
        """(per-pair losses including any NLL term, chosen rewards, rejected rewards)."""
        raise NotImplementedError

    def pair_terms(self, model: nn.Module, batch: dict):
        sums, counts = completion_logps(model, batch)
        return (*self.pair_losses(sums, counts.clamp(min=1).to(sums.dtype)), (sums.detach(), counts))

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.pair_terms(model, batch)[0].sum()

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        return self.evaluate_pairs(model, batches)


@TASKS.register("orpo")
class ORPOTask(RefFreeTask):
    """ORPO: chosen NLL plus an odds-ratio preference term, no reference model."""

    name = "orpo"
    config_class = ORPOConfig

    def pair_losses(self, sums, counts):
        (sc, sr), (nc, nr) = sums.chunk(2), counts.chunk(2)
        losses, c, r = orpo_loss(sc / nc, sr / nr, beta=self.cfg.beta)
        return -sc / nc + losses, c, r


@TASKS.register("simpo")
class SimPOTask(RefFreeTask):
    """SimPO: length-normalised log-probability margin with a target gap, no reference model."""

    name = "simpo"
    config_class = SimPOConfig

    def pair_losses(self, sums, counts):
        (sc, sr), (nc, nr) = sums.chunk(2), counts.chunk(2)
        losses, c, r = cpo_loss(sc / nc, sr / nr, beta=self.cfg.beta, loss_type="simpo",
                                label_smoothing=self.cfg.label_smoothing, gamma=self.cfg.gamma)
        return losses + self.cfg.sft_weight * (-sc / nc), c, r


@TASKS.register("cpo")
class CPOTask(RefFreeTask):
    """CPO: DPO's loss with the reference dropped, plus the chosen reply's NLL."""

    name = "cpo"
    config_class = CPOConfig

    def pair_losses(self, sums, counts):
        (sc, sr), (nc, _) = sums.chunk(2), counts.chunk(2)
        losses, c, r = cpo_loss(sc, sr, beta=self.cfg.beta, loss_type=self.cfg.loss_type,
                                label_smoothing=self.cfg.label_smoothing)
        return losses + self.cfg.cpo_alpha * (-sc / nc), c, r

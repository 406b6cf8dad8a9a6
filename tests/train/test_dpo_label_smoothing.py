"""DPO label smoothing (conservative DPO, Mitchell 2023) against the installed TRL. TRL 1.x's `sigmoid` loss no
longer takes label_smoothing; its `aot` loss applies exactly this smoothing, -(1-e) log s(b d) - e log s(-b d), to
sorted log-ratio differences, and for one pair the sort is the identity, so each pair is scored by TRL alone."""
import pytest
import torch

from tuneforge.train.tasks.dpo import dpo_loss

from .test_dpo import random_logps, trl_loss


@pytest.mark.slow  # importing TRL takes 15-40 s here
@pytest.mark.parametrize("beta,eps", [(0.1, 0.1), (0.5, 0.3)])
def test_label_smoothing_equals_trl(beta, eps):
    pc, pr, rc, rr = random_logps(5, seed=7)
    ours = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)[0]
    ones = torch.ones(1, dtype=torch.long)
    for i in range(5):
        pair = [t[i : i + 1] for t in (pc, pr, rc, rr)]
        theirs, _ = trl_loss("aot", beta, eps, *pair, 3 * ones, 2 * ones)
        assert torch.allclose(ours[i], theirs, atol=1e-12, rtol=1e-10), i
    unsmoothed = dpo_loss(pc, pr, rc, rr, beta=beta)[0]
    assert not torch.allclose(ours, unsmoothed)  # the smoothing is really in play

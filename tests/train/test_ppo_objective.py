"""PPO's clipped policy objective, clipped value loss and advantage whitening on hand-built tensors, each case
worked out here by hand from the formulas (Schulman et al. 2017 eq. 7; value clipping as in Ziegler et al. 2019
and TRL's PPO): values, which branch the max takes, and the gradients (zero where the clipped branch is taken).
The installed TRL (1.x) no longer ships a PPO trainer to compare with, so the formulas are the oracle."""
import math

import torch

from tuneforge.train.ppo import ppo_token_losses, whiten

EPS, EPS_V = 0.2, 0.2


def test_clipped_policy_objective_values_branches_and_gradients():
    # (advantage, ratio): expected loss, clipped branch taken, d loss / d logp
    cases = [
        (1.0, 1.5, -1.2, True, 0.0),    # good action pushed past 1 + e: the clip caps the gain, no gradient
        (1.0, 0.5, -0.5, False, -0.5),  # good action made rarer: unclipped (pessimistic max), grad = -A r
        (-2.0, 1.5, 3.0, False, 3.0),   # bad action made likelier: unclipped, grad = -A r
        (-2.0, 0.5, 1.6, True, 0.0),    # bad action pushed below 1 - e: clipped, no gradient
        (0.5, 1.1, -0.55, False, -0.55),  # inside the trust region: plain -A r
    ]
    adv = torch.tensor([[c[0] for c in cases]], dtype=torch.float64)
    old = torch.full_like(adv, -1.0)
    logps = (old + torch.log(torch.tensor([[c[1] for c in cases]], dtype=torch.float64))).requires_grad_()
    zeros = torch.zeros_like(adv)
    pg, _, clipped = ppo_token_losses(logps, old, zeros, zeros, zeros, adv, EPS, EPS_V)
    assert torch.allclose(pg, torch.tensor([[c[2] for c in cases]], dtype=torch.float64), atol=1e-12)
    assert clipped.tolist() == [[c[3] for c in cases]]
    pg.sum().backward()
    assert torch.allclose(logps.grad, torch.tensor([[c[4] for c in cases]], dtype=torch.float64), atol=1e-12)


def test_clipped_value_loss_values_and_gradients():
    # (value, return) with old value 0 and e_v 0.2: expected 0.5 max((v-R)^2, (v_c-R)^2) and its gradient in v
    cases = [
        (1.0, 0.0, 0.5, 1.0),      # unclipped error is the larger: grad v - R
        (1.0, 1.0, 0.32, 0.0),     # v_c = 0.2 is 0.8 off: the clipped (constant in v) branch wins
        (0.1, 1.0, 0.405, -0.9),   # inside the clip range: both branches equal
        (-0.5, -1.0, 0.32, 0.0),   # v_c = -0.2 is 0.8 off: clipped branch
        (-0.5, 0.0, 0.125, -0.5),  # unclipped branch
    ]
    values = torch.tensor([[c[0] for c in cases]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[c[1] for c in cases]], dtype=torch.float64)
    zeros = torch.zeros_like(returns)
    _, vf, _ = ppo_token_losses(zeros, zeros, values, zeros, returns, zeros, EPS, EPS_V)
    assert torch.allclose(vf, torch.tensor([[c[2] for c in cases]], dtype=torch.float64), atol=1e-12)
    vf.sum().backward()
    assert torch.allclose(values.grad, torch.tensor([[c[3] for c in cases]], dtype=torch.float64), atol=1e-12)


def test_advantage_whitening_over_response_tokens_only():
    """(A - mean) / (std + 1e-8) over the response tokens, population std (TRL's masked_whiten divides by the
    Bessel-corrected std instead: a factor sqrt((n-1)/n) apart); prompt and padding positions come out 0."""
    x = torch.tensor([[1.0, 2.0, 4.0, 99.0], [-3.0, 0.5, 77.0, 88.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    picked = [1.0, 2.0, 4.0, -3.0, 0.5]
    mean = sum(picked) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in picked) / 5)
    expected = [[(v - mean) / (std + 1e-8) if m else 0.0 for v, m in zip(row, mrow)]
                for row, mrow in zip(x.tolist(), mask.tolist())]
    out = whiten(x, mask)
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert abs(float(out[mask].mean())) < 1e-12 and abs(float(out[mask].std(unbiased=False)) - 1) < 1e-8
    single = whiten(torch.tensor([[5.0, 7.0]]), torch.tensor([[True, False]]))
    assert single.tolist() == [[0.0, 0.0]]  # one token: centred, not divided by a zero std

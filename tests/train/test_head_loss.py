"""The one-pass linear cross-entropy equals autograd's cross_entropy on full logits: loss and every gradient."""
import pytest
import torch
import torch.nn.functional as F

from tuneforge.train.head_loss import linear_cross_entropy


def reference(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_loss_and_gradients_equal_full_logits(with_bias, chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=g)
    weight = torch.randn(50, 8, generator=g)
    bias = torch.randn(50, generator=g) if with_bias else None
    targets = torch.randint(0, 50, (13,), generator=g)
    grads = []
    for fn in (reference, lambda *a: linear_cross_entropy(*a, chunk_size=chunk)):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
        loss = fn(leaves[0], leaves[1], leaves[2] if with_bias else None, targets)
        (loss * 0.5).backward()  # a non-unit incoming gradient must scale every saved gradient
        grads.append((loss.detach(), [t.grad for t in leaves]))
    (ref_loss, ref_grads), (loss, got) = grads
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_head_gets_no_gradient_and_no_grad_mode_gives_the_loss():
    hidden = torch.randn(4, 6, requires_grad=True)
    weight = torch.randn(9, 6)
    targets = torch.tensor([0, 3, 8, 2])
    loss = linear_cross_entropy(hidden, weight, None, targets)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, None, targets),
                                   reference(hidden, weight, None, targets))


def test_no_targets_gives_a_zero_loss_that_backpropagates():
    hidden = torch.randn(0, 6, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(9, 6), None, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss) == 0.0

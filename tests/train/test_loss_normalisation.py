"""Gradient accumulation normalises over all targets of the optimizer step, so micro-batches with unequal
target counts give exactly the gradient of one big batch (averaging per micro-batch would not)."""
import torch

from tuneforge.train import run_training
from tuneforge.train.loop import accumulate

from .common import make_cfg, make_examples, make_model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_accumulated_equals_one_big_batch(sft_task):
    few = make_examples(2, seed=1, lo=6, hi=8)  # few targets
    many = make_examples(2, seed=2, lo=30, hi=40)  # many targets
    small, big = sft_task.collate(few), sft_task.collate(many)
    assert sft_task.num_targets(small) * 3 < sft_task.num_targets(big)
    model = make_model()

    model.zero_grad(set_to_none=True)
    loss_acc, n_acc = accumulate(model, sft_task, [small, big])
    g_acc = grads(model)

    model.zero_grad(set_to_none=True)
    loss_one, n_one = accumulate(model, sft_task, [sft_task.collate(few + many)])
    g_one = grads(model)

    assert n_acc == n_one
    torch.testing.assert_close(torch.tensor(loss_acc / n_acc), torch.tensor(loss_one / n_one), rtol=1e-5, atol=1e-6)
    for name in g_one:
        torch.testing.assert_close(g_acc[name], g_one[name], rtol=1e-4, atol=1e-7, msg=name)

    # the naive per-micro-batch mean is measurably different, so the check above has teeth
    model.zero_grad(set_to_none=True)
    for batch in (small, big):
        (sft_task.loss_sum(model, batch) / sft_task.num_targets(batch) / 2).backward()
    assert not all(torch.allclose(p.grad, g_one[n], rtol=1e-3) for n, p in model.named_parameters() if p.requires_grad)


def test_loop_accumulation_matches_big_batch(tmp_path, sft_task):
    examples = make_examples(8, seed=3)
    runs = {}
    for name, cfg in {"accum": make_cfg(micro_batch_size=2, grad_accum_steps=4),
                      "big": make_cfg(micro_batch_size=8, grad_accum_steps=1)}.items():
        model = make_model()
        result = run_training(model, sft_task, examples, [], cfg, tmp_path / name, progress=False)
        runs[name] = (result, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
    (acc, p_acc), (big, p_big) = runs["accum"], runs["big"]
    assert acc.steps == big.steps == 1
    assert abs(acc.train_loss - big.train_loss) < 1e-5
    for name in p_big:
        # Adam divides by |g|, so near-zero gradient entries amplify float noise: 1% of one lr step
        torch.testing.assert_close(p_acc[name], p_big[name], rtol=0, atol=1e-4, msg=name)

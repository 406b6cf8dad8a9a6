"""The fused head (hidden states gathered at target positions, head applied in chunks) equals full logits."""
import torch

from tuneforge.data import pack_examples
from tuneforge.train.tasks.sft import SFTTask, fused_head_parts

from .common import PAD, make_examples, make_model


def losses_and_grads(model, task, batch):
    model.zero_grad(set_to_none=True)
    loss = task.loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def check_equal(batch):
    model = make_model()
    assert fused_head_parts(model) is not None
    full_loss, full_grads = losses_and_grads(model, SFTTask(PAD, fused_head=False), batch)
    for chunk in (1024, 7):  # one chunk, and many chunks with recomputation in backward
        loss, grads = losses_and_grads(model, SFTTask(PAD, chunk_size=chunk), batch)
        torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_head_equals_full_logits():
    task = SFTTask(PAD)
    check_equal(task.collate(make_examples(4, seed=1)))


def test_fused_head_equals_full_logits_packed():
    task = SFTTask(PAD)
    rows = pack_examples(make_examples(6, seed=2), max_length=40)
    batch = task.collate(rows)
    assert "attention_mask" not in batch and batch["seq_lens"].shape[0] == len(rows)
    check_equal(batch)


def test_loss_matches_transformers_own_loss():
    """Sum over targets / count equals the model's mean causal-LM loss on the same labels."""
    model = make_model()
    task = SFTTask(PAD)
    batch = task.collate(make_examples(3, seed=3))
    with torch.no_grad():
        mine = task.loss_sum(model, batch) / task.num_targets(batch)
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_num_tokens_counts_real_tokens():
    task = SFTTask(PAD)
    examples = make_examples(5, seed=4)
    real = sum(len(e["input_ids"]) for e in examples)
    assert task.num_tokens(task.collate(examples)) == real
    assert task.num_tokens(task.collate(pack_examples(examples, 64))) == real


def test_unknown_layout_uses_full_logits():
    model = make_model()
    model.config.model_type = "somethingelse"
    assert fused_head_parts(model) is None

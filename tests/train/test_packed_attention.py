"""Per-example attention over packed rows equals the block-diagonal masked attention: losses and gradients."""
import torch

from tuneforge.data import pack_examples
from tuneforge.models.packed_attention import PACKED_SDPA
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_examples, make_model


def loss_and_grads(model, task, batch):
    model.zero_grad(set_to_none=True)
    loss = task.loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_packed_attention_equals_the_masked_rows():
    task = SFTTask(PAD)
    rows = pack_examples(make_examples(9, seed=5, lo=4, hi=15), max_length=40)
    batch = task.collate(rows)
    assert batch["packed_seq_lens"].shape[0] == len(rows)
    assert any(len(r["input_ids"]) < 40 for r in rows)  # a padded tail is part of the check
    model = make_model(num_attention_heads=4, num_key_value_heads=2)  # grouped-query attention too
    model.config._attn_implementation = "sdpa"
    masked = loss_and_grads(model, SFTTask(PAD, packed_attention=False), batch)
    assert model.config._attn_implementation == "sdpa"
    packed = loss_and_grads(model, task, batch)
    assert model.config._attn_implementation == PACKED_SDPA
    torch.testing.assert_close(packed[0], masked[0], rtol=1e-5, atol=1e-5)
    for name, grad in packed[1].items():
        torch.testing.assert_close(grad, masked[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_unpacked_batches_run_plain_sdpa_under_the_packed_name():
    model = make_model()
    model.config._attn_implementation = "sdpa"
    task = SFTTask(PAD)
    packed = task.collate(pack_examples(make_examples(4, seed=6), max_length=64))
    task.loss_sum(model, packed)  # switches the model over
    plain = task.collate(make_examples(3, seed=7))
    assert "packed_seq_lens" not in plain
    with torch.no_grad():
        ours = task.loss_sum(model, plain)
        model.config._attn_implementation = "sdpa"
        reference = task.loss_sum(model, plain)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)

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
    assert batch["seq_lens"].shape[0] == len(rows)
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
    assert "seq_lens" not in plain
    with torch.no_grad():
        ours = task.loss_sum(model, plain)
        model.config._attn_implementation = "sdpa"
        reference = task.loss_sum(model, plain)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def _qkv(seed: int = 0, rows: int = 2, heads: int = 3, length: int = 12, dim: int = 8):
    torch.manual_seed(seed)
    # (rows, length, heads, dim) transposed, as transformers hands q/k/v to attention: a non-contiguous view
    return [torch.randn(rows, length, heads, dim).transpose(1, 2).requires_grad_() for _ in range(3)]


def test_the_custom_operator_for_compiled_blocks_is_the_same_attention():
    """Compiled blocks call the kernels through torch.library operators: the same outputs and gradients, bit for
    bit, as the autograd function eager blocks use, and the operator passes torch.library.opcheck (shape
    function, autograd registration, no aliasing)."""
    from tuneforge.models.packed_attention import (PackedAttention, _spans, packed_attention_op,
                                                   packed_seq_lens)

    seq_lens = packed_seq_lens([[5, 4], [3, 3, 4]])  # row 0 ends in 3 padding positions, row 1 in 2
    q, k, v = _qkv()
    grad = torch.randn(2, 12, 3, 8)
    eager = PackedAttention.apply(q, k, v, 0.25, _spans(seq_lens))
    eager_grads = torch.autograd.grad(eager, (q, k, v), grad)
    op, lse = packed_attention_op(q, k, v, seq_lens, 0.25)
    op_grads = torch.autograd.grad(op, (q, k, v), grad)
    assert torch.equal(op, eager) and lse.dtype == torch.float32
    for a, b in zip(op_grads, eager_grads):
        assert torch.equal(a, b)
    assert not op[0, 9:].any() and not op_grads[0][0, :, 9:].any()  # padding: zero outputs, zero gradients
    torch.library.opcheck(packed_attention_op, (q, k, v, seq_lens, 0.25),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_a_compiled_block_keeps_per_example_attention_without_a_graph_break():
    """Under torch.compile the packed rows still attend per example (the masked call does ~2x the work at 256
    tokens) and the block stays one graph."""
    import tuneforge.methods as M
    from tuneforge.models.fused_mlp import use_fused_mlp
    from tuneforge.models.packed_attention import packed_seq_lens, use_packed_attention
    from tuneforge.models.tiny import tiny_llama

    model = tiny_llama(seed=3)
    model.config._attn_implementation = "sdpa"
    M.add_adapter(model, "lora", r=4, target_modules="all-linear")
    use_fused_mlp(model)
    assert use_packed_attention(model)
    model.train()
    block = model.model.layers[1]
    hidden = torch.randn(2, 12, model.config.hidden_size, requires_grad=True)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1]])
    cos_sin = model.model.rotary_emb(hidden, positions)
    seq_lens = packed_seq_lens([[5, 4], [3, 3, 4]])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(hidden, position_embeddings=cos_sin, position_ids=positions,
                                             attention_mask=None, packed_seq_lens=seq_lens)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    ops = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert any("packed_attention" in op for op in ops), ops

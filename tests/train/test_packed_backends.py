"""Packed rows without an L x L mask: for every attention backend this machine runs, the loss and gradients of a
packed batch equal those of its examples run one at a time, unpacked.

Tolerance, from the arithmetic: the two runs add the same terms in different orders (softmax over up to L keys,
matmuls over the hidden size H, the loss over all targets), so each result may differ by a few float32 rounding
steps per term: rtol = 16 * eps(fp32) * (L + H), about 2e-4 here; gradients get the same relative bound, taken
against the largest reference gradient of each tensor.
"""
import importlib.util

import pytest
import torch

from tuneforge.data import pack_examples
from tuneforge.models.packed_attention import PACKED_SDPA, packed_backend, packed_inputs
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_examples, make_model

LENGTH = 48
HIDDEN = 64
RTOL = 16 * torch.finfo(torch.float32).eps * (LENGTH + HIDDEN)


def _loss_and_grads(model, task, batch):
    model.zero_grad(set_to_none=True)
    loss = task.loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _reference(examples):
    """Each example alone (unpacked, a plain causal row): summed loss and summed gradients."""
    model = make_model(num_attention_heads=4, num_key_value_heads=2)
    model.config._attn_implementation = "sdpa"
    task = SFTTask(PAD, packed_attention=False)
    total, grads = 0.0, {}
    for ex in examples:
        loss, g = _loss_and_grads(model, task, task.collate([ex]))
        total = total + loss
        for name, value in g.items():
            grads[name] = grads.get(name, 0) + value
    return total, grads


def _flex_works() -> bool:
    """FlexAttention on CPU compiles through inductor's C++ backend: it needs a compiler and a recent torch."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


BACKENDS = [
    pytest.param("per_example", id="per-example CPU kernels (PACKED_SDPA)"),
    pytest.param("sdpa", id="sdpa, transformers' packed-sequence mask from position_ids"),
    pytest.param("eager", id="eager, same mask"),
    pytest.param("mask", id="additive block mask (models outside PACKED_MODEL_TYPES)"),
    pytest.param("flex_attention", id="flex_attention document mask (forward only on CPU)",
                 marks=pytest.mark.skipif(not _flex_works(), reason="FlexAttention cannot compile here")),
    pytest.param("flash_attention_2", id="flash-attn varlen",
                 marks=pytest.mark.skipif(not torch.cuda.is_available()
                                          or importlib.util.find_spec("flash_attn") is None,
                                          reason="needs CUDA and flash-attn (tests/gpu covers it)")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_rows_equal_the_examples_alone(backend, monkeypatch):
    examples = make_examples(7, seed=11, lo=4, hi=18)
    rows = pack_examples(examples, max_length=LENGTH)
    assert len(rows) < len(examples) and any(len(r["input_ids"]) < LENGTH for r in rows)  # packed, padded tails
    model = make_model(num_attention_heads=4, num_key_value_heads=2)
    model.config._attn_implementation = "sdpa" if backend in ("per_example", "mask") else backend
    if backend == "mask":  # a model type that does not read position_ids gets the explicit block mask
        monkeypatch.setattr("tuneforge.models.packed_attention.PACKED_MODEL_TYPES", frozenset())
    task = SFTTask(PAD, packed_attention=backend == "per_example")
    batch = task.collate(rows)
    assert "attention_mask" not in batch
    expected_backend = {"per_example": PACKED_SDPA}.get(backend, backend)
    assert packed_backend(model, per_example=task.packed_attention) == expected_backend
    if backend != "mask":
        inputs, _, _ = packed_inputs(model, batch, per_example=task.packed_attention)
        assert "attention_mask" not in inputs  # nothing of size L x L goes in
    ref_loss, ref_grads = _reference(examples)
    if backend == "flex_attention" and not torch.cuda.is_available():  # no FlexAttention backward on CPU
        with torch.no_grad():
            torch.testing.assert_close(task.loss_sum(model, batch), ref_loss, rtol=RTOL, atol=0.0)
        return
    loss, grads = _loss_and_grads(model, task, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=RTOL, atol=0.0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grad, ref_grads[name], rtol=RTOL, atol=RTOL * scale, msg=name)


def test_no_l_by_l_tensor_is_built_on_the_per_example_path(monkeypatch):
    """Inside packed_rows() PACKED_SDPA's mask function builds nothing: count what sdpa_mask is asked for."""
    import transformers.masking_utils as mu

    calls = []
    original = mu.sdpa_mask
    monkeypatch.setattr(mu, "sdpa_mask", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = make_model()
    model.config._attn_implementation = "sdpa"
    task = SFTTask(PAD)
    batch = task.collate(pack_examples(make_examples(5, seed=3), max_length=LENGTH))
    task.loss_sum(model, batch).backward()
    assert model.config._attn_implementation == PACKED_SDPA and calls == []


def test_a_model_that_drops_the_lengths_fails_loudly():
    """Packed rows through PACKED_SDPA without packed_seq_lens reaching the attention would attend across
    examples: an error, never a silent wrong loss."""
    from tuneforge.models.packed_attention import packed_rows, packed_sdpa_forward

    q = torch.randn(1, 2, 6, 8)
    with packed_rows(), pytest.raises(RuntimeError, match="packing"):
        packed_sdpa_forward(torch.nn.Module(), q, q, q, None)

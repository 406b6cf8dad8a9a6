"""The batched LoRA path of mixed batches (methods/_mixed_lora.py): exact against each adapter alone, refreshed
when factors change, and stepped aside for training and for variants with other maths."""
from __future__ import annotations

import pytest
import torch

from tuneforge.methods import add_adapter, mark_trainable, mixed_batch, set_active_adapters
from tuneforge.models import tiny_llama


def model_with(method: str, names=("a", "b", "c"), **fields):
    model = tiny_llama()
    for seed, name in enumerate(names, start=1):
        torch.manual_seed(seed)
        add_adapter(model, method, name, r=2 + seed, target_modules=["q_proj", "v_proj", "down_proj"],
                    init_lora_weights=False, **fields)
    return model


def alone(model, name, ids):
    if name is None:
        set_active_adapters(model, [])
    else:
        set_active_adapters(model, [name])
    return model(ids).logits


def q_layer(model):
    return model.model.layers[0].self_attn.q_proj


def stacked(layer):
    """The factors the batched path stacked for the layer's last mixed batch (None: it never ran)."""
    batch = layer.__dict__.get("_mixed_lora")
    return batch._stack if batch is not None else None


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_mixed_rows_equal_each_adapter_alone(method):
    model = model_with(method)
    rows = ["b", None, "a", "c", "b"]
    ids = torch.randint(0, 256, (len(rows), 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with mixed_batch(model, rows):
            mixed = model(ids).logits
        for i, name in enumerate(rows):
            torch.testing.assert_close(mixed[i], alone(model, name, ids[i:i + 1])[0], atol=1e-5, rtol=1e-5)
    assert (stacked(q_layer(model)) is not None) == (method == "lora")  # DoRA keeps the per-adapter loop


def test_stacked_factors_follow_in_place_updates_and_new_adapters():
    model = model_with("lora")
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with mixed_batch(model, ["a", "b"]):
            before = model(ids).logits
        q_layer(model).lora_B["a"].weight.mul_(3.0)
        with mixed_batch(model, ["a", "b"]):
            after = model(ids).logits
        assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])
        torch.testing.assert_close(after[0], alone(model, "a", ids[:1])[0], atol=1e-5, rtol=1e-5)
        torch.manual_seed(9)
        add_adapter(model, "lora", "d", r=2, target_modules=["q_proj"], init_lora_weights=False)
        with mixed_batch(model, ["d", "a"]):
            mixed = model(ids).logits
        torch.testing.assert_close(mixed[0], alone(model, "d", ids[:1])[0], atol=1e-5, rtol=1e-5)


def test_training_a_mixed_batch_takes_the_autograd_path():
    model = model_with("lora")
    mark_trainable(model)  # every adapter trains
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    with mixed_batch(model, ["a", "b"]):
        model(ids).logits.sum().backward()
    assert stacked(q_layer(model)) is None
    assert q_layer(model).lora_B["a"].weight.grad is not None and q_layer(model).lora_B["c"].weight.grad is None


@pytest.mark.parametrize("gather", [True, False])
def test_gathered_and_masked_forms_agree_with_each_adapter_alone(monkeypatch, gather):
    """Prompts take the per-row gather (equal ranks, enough adapters and tokens), decoding the masked stack."""
    from tuneforge.methods import _mixed_lora

    monkeypatch.setattr(_mixed_lora, "GATHER_MIN_TOKENS", 1 if gather else 10**9)
    model = tiny_llama()
    names = ["a", "b", "c", "d", "e"]
    for seed, name in enumerate(names, start=1):
        torch.manual_seed(seed)
        add_adapter(model, "lora", name, r=4, lora_alpha=seed, target_modules=["q_proj", "v_proj", "down_proj"],
                    init_lora_weights=False)
    rows = ["e", "a", None, "c", "b", "d", "a"]
    ids = torch.randint(0, 256, (len(rows), 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with mixed_batch(model, rows):
            mixed = model(ids).logits
        for i, name in enumerate(rows):
            torch.testing.assert_close(mixed[i], alone(model, name, ids[i:i + 1])[0], atol=1e-5, rtol=1e-5)
    assert stacked(q_layer(model)).a_each is not None

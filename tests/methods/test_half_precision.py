"""Adapters on a bf16 base: their parameters train in fp32 (in bf16 most AdamW updates round away) and the layers'
outputs match peft, which upcasts its adapters the same way (autocast_adapter_dtype)."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.io import load_adapter
from tuneforge.models.tiny import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "pissa", "lora_fa", "ia3", "vera", "bottleneck"])
def test_half_precision_base_gets_fp32_factors_and_bf16_outputs(method):
    model = tiny_llama().to(torch.bfloat16)
    fields = {"ia3": {"target_modules": TARGETS, "feedforward_modules": ["down_proj"]},
              "bottleneck": {"target_modules": TARGETS}}.get(method, {"r": 4, "target_modules": TARGETS})
    M.add_adapter(model, method, **fields)
    factors = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert factors and set(factors.values()) == {torch.float32}
    ids = torch.randint(0, 200, (2, 10))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_small_updates_survive_on_a_bf16_base():
    """An lr-sized step on A changes it: in bf16 (8 mantissa bits) a 1e-4 relative change rounds to nothing."""
    model = tiny_llama().to(torch.bfloat16)
    M.add_adapter(model, "lora", r=4, target_modules=TARGETS)
    a = model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    before = a.detach().clone()
    with torch.no_grad():
        a.add_(before * 1e-4)
    assert not torch.equal(a, before)


def test_bf16_base_lora_equals_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_llama().to(torch.bfloat16),
                                LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}
    peft_model.save_pretrained(tmp_path)
    ours = tiny_llama().to(torch.bfloat16)
    load_adapter(ours, tmp_path, trainable=True)
    ids = torch.randint(0, 200, (2, 10))
    theirs_out, ours_out = peft_model(input_ids=ids).logits, ours(input_ids=ids).logits
    torch.testing.assert_close(ours_out, theirs_out, rtol=0, atol=0)  # the same ops in the same dtypes
    theirs_out.float().pow(2).mean().backward()
    ours_out.float().pow(2).mean().backward()
    theirs = {n.replace("base_model.model.", ""): p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, theirs[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", ["ia3", "vera"])
def test_bf16_base_ia3_and_vera_equal_peft(tmp_path, method):
    from peft import IA3Config, VeraConfig, get_peft_model

    config = (IA3Config(target_modules=TARGETS, feedforward_modules=["down_proj"], init_ia3_weights=False)
              if method == "ia3" else VeraConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False))
    peft_model = get_peft_model(tiny_llama().to(torch.bfloat16), config)
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}
    peft_model.save_pretrained(tmp_path)
    ours = tiny_llama().to(torch.bfloat16)
    load_adapter(ours, tmp_path, trainable=True)
    assert {p.dtype for p in ours.parameters() if p.requires_grad} == {torch.float32}
    ids = torch.randint(0, 200, (2, 10))
    torch.testing.assert_close(ours(input_ids=ids).logits, peft_model(input_ids=ids).logits, rtol=2e-2, atol=2e-2)

"""Adapters on a bf16 base: their parameters train in fp32 (in bf16 most AdamW updates round away) and the layers'
outputs match peft, which upcasts its adapters the same way (autocast_adapter_dtype); LoRA's product runs in bf16
(as under autocast), within 2^-8 of relative error per adapted layer of peft's fp32 adapter."""
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


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference).norm() / reference.norm())


def test_bf16_base_lora_is_as_accurate_as_peft(tmp_path):
    """Ours multiplies fp32 factors in bf16 (models/fused_linear.py compute_factors: cast the factors, not each
    activation, as autocast does); peft casts x up and runs the adapter in fp32. Both are measured against the
    same adapter on the fp32 upcast of the same bf16 base. Each adapted layer a value passes through rounds its
    rank-r product and its output to bf16 where peft kept fp32 (two roundings of at most 2^-9, relative): ours may
    add at most 2^-8 of relative error per adapted layer over peft's, to the logits and to every factor's
    gradient, whatever the CPU's kernels."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_llama().to(torch.bfloat16),
                                LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float32}
    peft_model.save_pretrained(tmp_path)
    ours = tiny_llama().to(torch.bfloat16)
    load_adapter(ours, tmp_path, trainable=True)
    exact = tiny_llama().to(torch.bfloat16).float()  # the same bf16 values, computed in fp32
    load_adapter(exact, tmp_path, trainable=True)
    ids = torch.randint(0, 200, (2, 10))
    outs = {name: model(input_ids=ids).logits for name, model in (("peft", peft_model), ("ours", ours),
                                                                     ("exact", exact))}
    assert outs["ours"].dtype == torch.bfloat16
    unit = 2.0 ** -8 * sum(1 for n, _ in ours.named_modules() if n.endswith(tuple(TARGETS)))
    assert _relative_error(outs["ours"], outs["exact"]) <= _relative_error(outs["peft"], outs["exact"]) + unit
    for out in outs.values():
        out.float().pow(2).mean().backward()
    grads = {name: {n.replace("base_model.model.", ""): p.grad for n, p in model.named_parameters()
                    if p.grad is not None} for name, model in (("peft", peft_model), ("ours", ours), ("exact", exact))}
    assert grads["ours"].keys() == grads["exact"].keys() and grads["ours"]
    for name, grad in grads["ours"].items():
        assert grad.dtype == torch.float32, name
        worst = _relative_error(grads["peft"][name], grads["exact"][name]) + unit
        assert _relative_error(grad, grads["exact"][name]) <= worst, name


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

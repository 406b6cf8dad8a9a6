"""train.base_matmul_dtype: bfloat16 (models/fused_linear.py use_half_matmuls): only the frozen base GEMMs of the
fused kernels round to bf16; the adapter's products, hence its gradients for a given upstream gradient, stay the
fp32 path's bit for bit, and the base product's error stays inside what bf16 rounding allows.

Error bound for a base product y = x W^T computed as round_bf16(fp32-sum of round_bf16(x) round_bf16(W)): each
rounding is at most 2^-9 relative, so |y - x W^T| <= (2^-9 + 2^-9 + 2^-18) sum|x||w| (inputs) + 2^-9 |y'| (output)
+ K 2^-24 sum|x||w| (the fp32 sum over K terms); with |y'| <= sum|x||w| that is under 4 * 2^-9 * (|x| @ |W|^T)
for K < 2^14. The tests use exactly that bound, elementwise."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.config import config_from_dict
from tuneforge.errors import ConfigError
from tuneforge.models.fused_linear import (FusedLoraLinear, drop_half_matmuls, matmul_weight,
                                           use_half_matmuls)
from tuneforge.models.fused_mlp import SwiGLUDown
from tuneforge.models.tiny import tiny_llama

BOUND = 4 * 2.0**-9


def _layer(n_in=96, n_out=80, r=4, bias=True):
    torch.manual_seed(0)
    base = torch.nn.Linear(n_in, n_out, bias=bias).requires_grad_(False)
    a = torch.randn(r, n_in).mul_(0.1).requires_grad_()
    b = torch.randn(n_out, r).mul_(0.1).requires_grad_()
    return base, a, b


def _run(x, weight, base, a, b, grad, p=0.0, seed=1):
    x = x.clone().requires_grad_()
    a.grad = b.grad = None
    torch.manual_seed(seed)
    out = FusedLoraLinear.apply(x, None, weight, base.bias, a, b, 2.0, p)
    out.backward(grad)
    return out.detach(), x.grad, a.grad.clone(), b.grad.clone()


@pytest.mark.parametrize("p", [0.0, 0.2], ids=["no-dropout", "dropout"])
def test_only_the_base_product_rounds(p):
    base, a, b = _layer()
    x, grad = torch.randn(2, 12, 96), torch.randn(2, 12, 80)
    assert use_half_matmuls([base]) == 1
    half = matmul_weight(base)
    assert half.dtype == torch.bfloat16 and matmul_weight(base) is half
    out32, dx32, da32, db32 = _run(x, base.weight, base, a, b, grad, p)
    out16, dx16, da16, db16 = _run(x, half, base, a, b, grad, p)
    # the adapter's gradients read x, z = x A^T and the upstream gradient only: the fp32 path's bits
    assert torch.equal(da16, da32) and torch.equal(db16, db32)
    w = base.weight.abs()
    assert ((out16 - out32).abs() <= BOUND * (x.abs() @ w.t())).all()
    assert ((dx16 - dx32).abs() <= BOUND * (grad.abs() @ w)).all()
    assert not torch.equal(out16, out32)  # the bf16 kernel ran
    drop_half_matmuls([base])
    assert matmul_weight(base) is base.weight


def test_swiglu_down_projection():
    base, a, b = _layer(n_in=64, n_out=32, bias=False)
    gate, up = torch.randn(10, 64).requires_grad_(), torch.randn(10, 64).requires_grad_()
    grad = torch.randn(10, 32)
    use_half_matmuls([base])
    results = []
    for weight in (base.weight, matmul_weight(base)):
        a.grad = b.grad = None
        out = SwiGLUDown.apply(gate, up, weight, None, a, b, 2.0, 0.0)
        out.backward(grad)
        results.append((out.detach(), a.grad.clone(), b.grad.clone()))
    (out32, da32, db32), (out16, da16, db16) = results
    assert torch.equal(da16, da32) and torch.equal(db16, db32)
    p = torch.nn.functional.silu(gate.detach()) * up.detach()
    assert ((out16 - out32).abs() <= BOUND * (p.abs() @ base.weight.abs().t())).all()


def test_copies_only_of_frozen_weights_and_never_stale():
    frozen = torch.nn.Linear(8, 8).requires_grad_(False)
    training = torch.nn.Linear(8, 8)
    assert use_half_matmuls([frozen, training]) == 1
    assert matmul_weight(training) is training.weight
    assert matmul_weight(frozen).dtype == torch.bfloat16
    with torch.no_grad():
        frozen.weight.add_(1.0)  # changed in place: the copy no longer applies
    assert matmul_weight(frozen) is frozen.weight
    use_half_matmuls([frozen])
    frozen.weight = torch.nn.Parameter(torch.zeros(8, 8), requires_grad=False)  # replaced
    assert matmul_weight(frozen) is frozen.weight


def test_lora_model_uses_the_copies_and_keeps_its_state_dict():
    model = tiny_llama()
    M.add_adapter(model, "lora", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    layers = [m.base_layer for m in model.modules() if hasattr(m, "fused_factors") and hasattr(m, "base_layer")]
    keys = set(model.state_dict())
    calls = []
    original = FusedLoraLinear.apply
    FusedLoraLinear.apply = lambda *args: calls.append(args[2].dtype) or original(*args)
    try:
        assert use_half_matmuls(layers) == len(layers) == 4
        ids = torch.randint(0, 200, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
    finally:
        FusedLoraLinear.apply = original
        drop_half_matmuls(layers)
    assert calls == [torch.bfloat16] * 4
    assert set(model.state_dict()) == keys  # nothing saved or loaded changes


def _config(**train):
    return {"model": {"name": "tiny-llama"}, "method": {"name": "lora"}, "task": "sft",
            "data": {"train": "x.jsonl"}, "train": {"base_matmul_dtype": "bfloat16", **train}}


@pytest.mark.parametrize("change, key", [
    ({"train": {"compile": True}}, "base_matmul_dtype"),
    ({"train": {"bf16": True}}, "base_matmul_dtype"),
    ({"model": {"dtype": "bfloat16"}}, "base_matmul_dtype"),
    ({"model": {"quantization": "nf4"}}, "base_matmul_dtype"),
    ({"train": {"base_matmul_dtype": "float16"}}, "base_matmul_dtype"),
])
def test_config_refuses_what_it_cannot_apply_to(change, key):
    cfg = _config()
    for section, values in change.items():
        cfg[section] = {**cfg[section], **values}
    with pytest.raises(ConfigError, match=key):
        config_from_dict(cfg)


def test_config_accepts_an_fp32_model():
    assert config_from_dict(_config()).train.base_matmul_dtype == "bfloat16"

"""SwiGLUDown keeps gate and up instead of four intermediate tensors, with outputs and gradients bit-identical to
the model's own MLP forward (plain, LoRA and 4-bit down projections), and steps aside where it does not apply."""
import copy

import pytest
import torch

import tuneforge.methods as M
from tuneforge.models.fused_mlp import SwiGLUDown, use_fused_mlp
from tuneforge.models.tiny import tiny_llama

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _pair(targets, quantization=None, method="lora"):
    model = tiny_llama()
    if quantization:
        from tuneforge.quant import quantize_model

        quantize_model(model, quantization)
    M.add_adapter(model, method, r=4, target_modules=targets, init_lora_weights=False)
    model.train()
    fused = copy.deepcopy(model)
    assert use_fused_mlp(fused) == 2
    return model, fused


@pytest.mark.parametrize("targets", [ALL, ["q_proj", "v_proj"]], ids=["lora-down", "plain-down"])
def test_outputs_and_gradients_equal_the_unfused_mlp(targets):
    model, fused = _pair(targets)
    ids = torch.randint(0, 200, (2, 24))
    loss, grads = _grads(model, ids)
    loss_f, grads_f = _grads(fused, ids)
    assert torch.equal(loss, loss_f) and grads.keys() == grads_f.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(grads_f[name], g, rtol=0, atol=0, msg=name)


def test_four_bit_down_projection_matches():
    pytest.importorskip("bitsandbytes")
    model, fused = _pair(ALL, quantization="nf4")
    ids = torch.randint(0, 200, (2, 16))
    loss, grads = _grads(model, ids)
    loss_f, grads_f = _grads(fused, ids)
    torch.testing.assert_close(loss_f, loss, rtol=0, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_fused_path_saves_two_intermediate_tensors_per_mlp():
    model, fused = _pair(ALL)
    ids = torch.randint(0, 200, (2, 24))
    width = model.config.intermediate_size

    def saved_wide(m):
        count = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(t.dim() > 0 and t.shape[-1] == width) or t, lambda t: t):
            m(input_ids=ids, labels=ids)
        return sum(count)

    layers = model.config.num_hidden_layers
    assert saved_wide(model) - saved_wide(fused) == 2 * layers  # silu(gate) and the product are not kept


def test_steps_aside_for_dora_and_inference():
    """(LoRA dropout does take the fused path: tests/methods/test_fused_dropout.py.)"""
    dora, fused_dora = _pair(ALL, method="dora")
    ids = torch.randint(0, 200, (2, 12))
    calls = []
    original = SwiGLUDown.apply
    SwiGLUDown.apply = lambda *a: calls.append(1) or original(*a)
    try:
        torch.testing.assert_close(fused_dora(input_ids=ids).logits, dora(input_ids=ids).logits, rtol=0, atol=0)
        with torch.no_grad():
            _, plain = _pair(ALL)
            plain(input_ids=ids)
    finally:
        SwiGLUDown.apply = original
    assert not calls


def test_a_training_down_projection_keeps_its_gradient():
    """Full fine-tuning: down_proj's own weight trains, so the model's forward runs and the weight gets its grad."""
    model = tiny_llama()
    fused = copy.deepcopy(model)
    use_fused_mlp(fused)
    model.train()
    fused.train()
    ids = torch.randint(0, 200, (2, 16))
    loss, grads = _grads(model, ids)
    loss_f, grads_f = _grads(fused, ids)
    assert "model.layers.0.mlp.down_proj.weight" in grads_f and grads.keys() == grads_f.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_f[name], g, rtol=0, atol=0, msg=name)

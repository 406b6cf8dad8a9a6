"""LoRA dropout inside the fused kernels (models/fused_linear.py, models/fused_mlp.py): it keeps a bool mask, not a
dropped float copy of each adapted layer's input; it draws the mask exactly as nn.Dropout does, so replaying a
generator state gives peft's outputs and gradients; and the dropped input has nn.Dropout's distribution."""
import math

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.utils import get_peft_model_state_dict

import tuneforge.methods as M
from tuneforge.models.fused_linear import FusedLoraLinear
from tuneforge.models.fused_mlp import SwiGLUDown, use_fused_mlp
from tuneforge.models.tiny import tiny_llama

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
P = 0.1


def _pair(fused_mlp: bool):
    pm = get_peft_model(tiny_llama(), PeftLoraConfig(r=4, target_modules=ALL, lora_dropout=P, init_lora_weights=False))
    ours = tiny_llama()
    M.add_adapter(ours, "lora", r=4, target_modules=ALL, lora_dropout=P, init_lora_weights=False)
    M.load_adapter_state_dict(ours, get_peft_model_state_dict(pm))
    if fused_mlp:
        assert use_fused_mlp(ours) == 2
    pm.train()
    ours.train()
    return pm, ours


def _loss_and_grads(model, ids, seed):
    torch.manual_seed(seed)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n.replace("base_model.model.", ""): p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.rand(())  # the generator's next draw: both consumed the same


def test_replaying_the_generator_gives_peft_outputs_and_gradients():
    """Same seed, same masks: the fused path (attention projections and the SwiGLU down projection) computes
    peft's loss and LoRA gradients. fp32 on a 2-layer model of width 64-128: the only differences are the order
    of a few hundred-term sums (relative error ~1e-6 at most), so 1e-5 is far from any mask difference (a
    different mask changes the loss in the 3rd digit)."""
    ids = torch.randint(0, 200, (2, 24))
    calls = []
    original = SwiGLUDown.apply
    SwiGLUDown.apply = lambda *a: calls.append(a[-1]) or original(*a)
    try:
        for fused_mlp in (False, True):
            pm, ours = _pair(fused_mlp)
            loss_p, grads_p, next_p = _loss_and_grads(pm, ids, seed=3)
            loss_o, grads_o, next_o = _loss_and_grads(ours, ids, seed=3)
            torch.testing.assert_close(loss_o, loss_p, rtol=1e-5, atol=0)
            assert torch.equal(next_o, next_p)
            assert grads_o.keys() == grads_p.keys() and len(grads_o) == 2 * len(ALL) * 2
            for name, g in grads_p.items():
                torch.testing.assert_close(grads_o[name], g, rtol=1e-5, atol=1e-6, msg=name)
    finally:
        SwiGLUDown.apply = original
    assert calls == [P, P]  # the fused MLP ran with dropout, once per layer


def test_a_different_seed_draws_a_different_mask():
    _, ours = _pair(True)
    ids = torch.randint(0, 200, (2, 24))
    a, _, _ = _loss_and_grads(ours, ids, seed=3)
    b, _, _ = _loss_and_grads(ours, ids, seed=4)
    assert abs(float(a - b)) > 1e-4


def test_keeps_a_bool_mask_not_a_dropped_float_copy():
    """Saved for backward by one fused layer: x, the rank-r z and, with dropout, x's keep-mask as bool (1 byte an
    element), where the unfused dropout keeps a float noise tensor and the dropped float input (8 bytes)."""
    layer = torch.nn.Linear(32, 48)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(5, 7, 32, requires_grad=True)
    A = torch.randn(4, 32, requires_grad=True)
    B = torch.randn(48, 4, requires_grad=True)
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    for p in (0.0, P):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            FusedLoraLinear.apply(x, None, layer.weight, layer.bias, A, B, 2.0, p).sum().backward()
        floats = sum(n for dtype, n in saved if dtype == torch.float32 and n == x.numel())
        bools = [n for dtype, n in saved if dtype == torch.bool]
        assert floats == x.numel()  # x once, and no other float tensor of x's size
        assert bools == ([x.numel()] if p else [])


def test_dropped_input_has_nn_dropout_distribution():
    """With W = 0, A = B = identity and scaling 1 the layer's output is the dropped input itself. Over 200k
    elements: each is 0 or x / (1 - p), exactly; the kept share is 1 - p within 6 binomial standard deviations;
    so mean and variance of output / x are nn.Dropout's (1 and p / (1 - p)) to that precision; and nn.Dropout's
    own draws over the same x give the same statistics."""
    n, d = 2000, 100
    x = torch.rand(n, d) + 0.5
    layer = torch.nn.Linear(d, d, bias=False)
    torch.nn.init.zeros_(layer.weight)
    eye = torch.eye(d)
    torch.manual_seed(11)
    out = FusedLoraLinear.apply(x, None, layer.weight, None, eye, eye, 1.0, P)
    torch.manual_seed(12)
    ref = torch.nn.functional.dropout(x, P, training=True)
    scale = torch.ones(()).div_(1 - P)
    std = math.sqrt(P * (1 - P) / x.numel())
    for y in (out, ref):
        kept = y != 0
        assert torch.equal(y[kept], x[kept] * scale)
        share = kept.float().mean().item()
        assert abs(share - (1 - P)) < 6 * std
        ratio = y / x
        assert abs(ratio.mean().item() - 1) < 6 * std / (1 - P)
        assert abs(ratio.var().item() - P / (1 - P)) < 6 * std / (1 - P) ** 2 * 2
    assert not torch.equal(out != 0, ref != 0)  # independent draws


def test_eval_mode_and_no_grad_take_no_mask():
    _, ours = _pair(True)
    ours.eval()
    ids = torch.randint(0, 200, (1, 10))
    state = torch.get_rng_state()
    a = ours(input_ids=ids).logits
    b = ours(input_ids=ids).logits
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_checkpointed_blocks_redraw_the_same_masks():
    """Whole-block and selective checkpointing recompute the forward in backward; torch restores the generator
    state for it, so the fused kernels draw the same masks again and the gradients are the plain run's (the same
    kernels on the same values: equal to fp32 rounding of a recomputed attention, far below a mask change)."""
    from tuneforge.train.activation_checkpointing import activation_checkpointing as _checkpointing

    ids = torch.randint(0, 200, (2, 24))
    _, plain = _pair(True)
    loss, grads, _ = _loss_and_grads(plain, ids, seed=5)
    for mode in (True, "elementwise"):
        _, model = _pair(True)
        with _checkpointing(model, mode):
            loss_c, grads_c, _ = _loss_and_grads(model, ids, seed=5)
        torch.testing.assert_close(loss_c, loss, rtol=1e-6, atol=0)
        for name, g in grads.items():
            torch.testing.assert_close(grads_c[name], g, rtol=1e-5, atol=1e-7, msg=f"{mode} {name}")

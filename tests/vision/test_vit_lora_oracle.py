"""LoRA on a ViT (attention Linear layers and the Conv2d patch embedding) equals HF peft: the same adapter
weights give the same logits and gradients whichever tool built the layers, and files cross both ways.

Tolerance: both compute W x + (alpha / r) B A x in float32; the only differences are summation order, at most
a few ulps (2^-24 relative) per dot product of <= 64 terms, through two blocks. Logits are O(1), so 1e-5 is
over 100x the rounding and still far below any real difference (a wrong scale or a missing layer moves them by
about 1e-2)."""
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

import tuneforge.methods as M
from tuneforge.io import load_adapter, save_adapter
from tuneforge.models.tiny import tiny_vit

TARGETS = ["q_proj", "v_proj", "projection"]  # projection: the patch embedding, a Conv2d (kernel = stride = 4)
TOL = 1e-5


def pixels(seed=1):
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def lora_grads(model):
    return {n.replace("base_model.model.", "").replace(".default", ""): p.grad.clone()
            for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


def test_peft_adapter_loads_into_ours_with_equal_logits_and_grads(tmp_path):
    pm = get_peft_model(tiny_vit(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                   init_lora_weights=False))
    pm.save_pretrained(tmp_path)
    ours = tiny_vit()
    load_adapter(ours, tmp_path, trainable=True)
    x = pixels()
    y_peft, y_ours = pm(pixel_values=x).logits, ours(pixel_values=x).logits
    assert (y_peft - y_ours).abs().max() < TOL
    assert (y_ours - tiny_vit()(pixel_values=x).logits).abs().max() > 1e-3  # the adapter does change the logits
    y_peft.pow(2).sum().backward()
    y_ours.pow(2).sum().backward()
    gp, go = lora_grads(pm), lora_grads(ours)
    assert gp.keys() == go.keys() and any("projection" in k for k in go)
    for k in gp:
        assert (gp[k] - go[k]).abs().max() < TOL * max(1.0, float(gp[k].abs().max())), k


def test_our_adapter_loads_in_peft_with_equal_logits(tmp_path):
    ours = tiny_vit()
    M.add_adapter(ours, "lora", r=4, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    save_adapter(ours, tmp_path)
    pm = PeftModel.from_pretrained(tiny_vit(), tmp_path)
    x = pixels(2)
    assert (pm(pixel_values=x).logits - ours(pixel_values=x).logits).abs().max() < TOL


def test_trainable_count_matches_peft():
    ours = tiny_vit()
    M.add_adapter(ours, "lora", r=4, target_modules=TARGETS)
    M.mark_trainable(ours)
    pm = get_peft_model(tiny_vit(), PeftLoraConfig(r=4, target_modules=TARGETS))
    assert M.count_parameters(ours)[0] == sum(p.numel() for p in pm.parameters() if p.requires_grad)

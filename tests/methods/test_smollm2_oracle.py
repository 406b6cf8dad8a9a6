"""LoRA on the real packaged SmolLM2 equals HF peft: same weights in, same logits and gradients out, and the
adapter files cross both ways."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.io import load_adapter, save_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_state():
    from tuneforge.models import load_model

    model = load_model("smollm2-135m-instruct")
    return model.config, {k: v.clone() for k, v in model.state_dict().items()}


def fresh(smollm2_state):
    from transformers import AutoModelForCausalLM

    config, state = smollm2_state
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def test_smollm2_lora_matches_peft_both_ways(smollm2_state, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    x = torch.tensor([[1, 504, 3029, 314, 260, 4567, 30, 2]])
    torch.manual_seed(0)
    peft_model = get_peft_model(fresh(smollm2_state), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "peft")
    ours = fresh(smollm2_state)
    load_adapter(ours, tmp_path / "peft", trainable=True)
    y_peft, y_ours = peft_model(input_ids=x).logits, ours(input_ids=x).logits
    assert (y_peft - y_ours).abs().max() < 1e-5
    y_peft.float().logsumexp(-1).mean().backward()
    y_ours.float().logsumexp(-1).mean().backward()
    g_peft = {n.replace("base_model.model.", "").replace(".default", ""): p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    g_ours = {n.replace(".default", ""): p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert g_peft.keys() == g_ours.keys() and len(g_ours) == 30 * 7 * 2
    worst = max((g_peft[k] - g_ours[k]).abs().max().item() for k in g_ours)
    scale = max(g_ours[k].abs().max().item() for k in g_ours)
    assert worst < 1e-5 * max(1.0, scale)  # 30 layers of fp32 sums: compare relative to the largest gradient

    save_adapter(ours, tmp_path / "ours")
    back = PeftModel.from_pretrained(fresh(smollm2_state), tmp_path / "ours")
    with torch.no_grad():
        assert (back(input_ids=x).logits - ours(input_ids=x).logits).abs().max() < 1e-5
        merged = M.unload(ours)
        assert (merged(input_ids=x).logits - y_ours).abs().max() < 5e-4  # logits ~20: merged fp32 sums round differently

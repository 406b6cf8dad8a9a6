"""(IA)^3 equals HF peft's IA3: outputs, gradients, trainable counts and merged weights; files cross both ways."""
import pytest
import torch
from peft import IA3Config as PeftIA3Config
from peft import PeftModel, get_peft_model

import tuneforge.methods as M
from tuneforge.errors import NotMergeable
from tuneforge.io import load_adapter, save_adapter
from tuneforge.models.tiny import tiny_bert, tiny_llama


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()


# name -> (builder, IA3 fields; empty = the architecture defaults, which peft and we share)
MODELS = {
    "llama-default": (tiny_llama, {}),
    "llama-regex": (tiny_llama, {"target_modules": r".*\.(q_proj|up_proj|down_proj)",
                                 "feedforward_modules": r".*\.(up_proj|down_proj)"}),
    "bert-default": (tiny_bert, {}),
    "gpt2-conv1d": (tiny_gpt2, {}),
}


def inputs(seed=1):
    return torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(seed))


def out(model, x):
    o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def ia3_grads(model):
    return {n.replace("base_model.model.", "").replace(".default", ""): p.grad.clone()
            for n, p in model.named_parameters() if "ia3_l" in n and p.grad is not None}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_peft_adapter_loads_into_ours_with_equal_outputs_and_grads(tmp_path, case):
    build, fields = MODELS[case]
    pm = get_peft_model(build(), PeftIA3Config(init_ia3_weights=False, **fields))
    pm.save_pretrained(tmp_path)
    ours = build()
    load_adapter(ours, tmp_path, trainable=True)
    x = inputs()
    y_peft, y_ours = out(pm, x), out(ours, x)
    assert (y_peft - y_ours).abs().max() < 1e-5
    y_peft.pow(2).mean().backward()
    y_ours.pow(2).mean().backward()
    gp, go = ia3_grads(pm), ia3_grads(ours)
    assert gp.keys() == go.keys() and gp
    for k in gp:
        assert (gp[k] - go[k]).abs().max() < 1e-5, k


@pytest.mark.parametrize("case", sorted(MODELS))
def test_our_adapter_loads_in_peft_and_counts_match(tmp_path, case):
    build, fields = MODELS[case]
    ours = build()
    M.add_adapter(ours, "ia3", init_ia3_weights=False, **fields)
    save_adapter(ours, tmp_path)
    pm = PeftModel.from_pretrained(build(), tmp_path)
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5
    trainable = get_peft_model(build(), PeftIA3Config(**fields))
    assert M.count_parameters(ours)[0] == sum(p.numel() for p in trainable.parameters() if p.requires_grad)


def test_default_targets_and_feedforward_follow_peft():
    m = tiny_llama()
    M.add_adapter(m, "ia3")
    layer = m.model.layers[0]
    assert layer.self_attn.k_proj.ia3_l["default"].shape == (32, 1)  # output scale: (out, 1)
    assert layer.mlp.down_proj.ia3_l["default"].shape == (1, 128)  # feed-forward input scale: (1, in)
    assert not hasattr(layer.self_attn.q_proj, "ia3_l")
    b = tiny_bert()
    M.add_adapter(b, "ia3")
    enc = b.encoder.layer[0]
    # peft's list match for feedforward_modules is a plain suffix: attention.output.dense counts too
    assert enc.attention.output.dense.feedforward["default"] and enc.output.dense.feedforward["default"]
    assert not enc.attention.self.key.feedforward["default"]


def test_merged_weights_equal_peft_merge_and_unmerge_restores():
    pm = get_peft_model(tiny_bert(), PeftIA3Config(init_ia3_weights=False))
    ours = tiny_bert()
    M.add_adapter(ours, "ia3")
    M.load_adapter_state_dict(ours, {k.replace(".default", ""): v for k, v in pm.state_dict().items() if "ia3_l" in k})
    before = {n: p.detach().clone() for n, p in ours.named_parameters() if "base_layer" in n}
    peft_merged = pm.merge_and_unload().state_dict()
    M.merge_adapters(ours)
    for n, p in ours.named_parameters():
        if "base_layer" in n:
            assert (p - peft_merged[n.replace("base_layer.", "")]).abs().max() < 1e-6, n
    M.unmerge_adapters(ours)
    for n, p in ours.named_parameters():
        if n in before:
            assert (p - before[n]).abs().max() < 1e-5, n


def test_two_active_adapters_multiply_as_in_peft():
    pm = get_peft_model(tiny_llama(), PeftIA3Config(init_ia3_weights=False), adapter_name="a")
    pm.add_adapter("b", PeftIA3Config(init_ia3_weights=False))
    pm.base_model.set_adapter(["a", "b"])
    ours = tiny_llama()
    for name in ("a", "b"):
        M.add_adapter(ours, "ia3", name)
        M.load_adapter_state_dict(ours, {k.replace(f".{name}", ""): v for k, v in pm.state_dict().items()
                                         if k.endswith(f"ia3_l.{name}")}, name)
    M.set_active_adapters(ours, ["a", "b"])
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5
    with M.mixed_batch(ours, ["a", None]):
        y = out(ours, x)
    M.set_active_adapters(ours, "a")
    assert (y[0] - out(ours, x)[0]).abs().max() < 1e-5
    with M.disable_adapters(ours):
        assert (y[1] - out(ours, x)[1]).abs().max() < 1e-5


@pytest.mark.parametrize("feedforward", [[], ["0", "2"]])
@pytest.mark.parametrize("conv", ["2d", "3d-groups"])
def test_conv_matches_peft_and_merges(conv, feedforward):
    def build():
        torch.manual_seed(0)
        if conv == "2d":
            return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        return torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1, groups=2), torch.nn.ReLU(),
                                   torch.nn.Conv3d(8, 4, 1, groups=4))

    fields = {"target_modules": ["0", "2"], "feedforward_modules": feedforward, "init_ia3_weights": False}
    torch.manual_seed(1)
    pm = get_peft_model(build(), PeftIA3Config(**fields))
    ours = build()
    M.add_adapter(ours, "ia3", **fields)
    M.load_adapter_state_dict(ours, {k.replace(".default", ""): v for k, v in pm.state_dict().items() if "ia3_l" in k})
    x = torch.randn(2, 3, 6, 6) if conv == "2d" else torch.randn(2, 4, 3, 4, 4)
    y = ours(x).detach()
    assert (pm(x) - y).abs().max() < 1e-5
    M.merge_adapters(ours)
    assert (ours(x) - y).abs().max() < 1e-5
    merged = pm.merge_and_unload()
    assert (merged(x) - y).abs().max() < 1e-5


def test_zero_scale_refuses_unmerge():
    m = tiny_llama()
    M.add_adapter(m, "ia3", target_modules=["k_proj"])
    with torch.no_grad():
        m.model.layers[0].self_attn.k_proj.ia3_l["default"][0] = 0.0
    M.merge_adapters(m)
    with pytest.raises(NotMergeable, match="exactly 0"):
        M.unmerge_adapters(m)


def test_feedforward_must_be_a_subset_of_targets():
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="feedforward_modules"):
        M.make_method_config("ia3", {"target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]})

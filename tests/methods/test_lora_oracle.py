"""LoRA equals HF peft numerically (outputs, gradients) and adapters cross between the tools both ways."""
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

import tuneforge.methods as M
from tuneforge.errors import AdapterMismatch, TargetNotFound
from tuneforge.io import load_adapter, save_adapter
from tuneforge.models.tiny import tiny_bert, tiny_llama


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()


MODELS = {
    "llama": (tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "llama-embed": (tiny_llama, ["q_proj", "v_proj", "embed_tokens"]),
    "gpt2-conv1d": (tiny_gpt2, ["c_attn", "c_proj", "c_fc"]),
    "bert": (tiny_bert, ["query", "key", "value", "dense"]),
}


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (2, 9), generator=g)


def out(model, x):
    o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def lora_grads(model):
    return {n.replace(".default", ""): p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


@pytest.mark.parametrize("case", sorted(MODELS))
@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_adapter_loads_into_ours_with_equal_outputs_and_grads(tmp_path, case, use_rslora):
    build, targets = MODELS[case]
    pm = get_peft_model(build(), PeftLoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False,
                                                use_rslora=use_rslora))
    pm.save_pretrained(tmp_path)
    ours = build()
    load_adapter(ours, tmp_path, trainable=True)
    x = inputs()
    y_peft, y_ours = out(pm, x), out(ours, x)
    assert (y_peft - y_ours).abs().max() < 1e-5
    y_peft.pow(2).mean().backward()
    y_ours.pow(2).mean().backward()
    gp = {k.replace("base_model.model.", ""): v for k, v in lora_grads(pm).items()}
    go = lora_grads(ours)
    assert gp.keys() == go.keys() and gp
    for k in gp:
        assert (gp[k] - go[k]).abs().max() < 1e-5, k


@pytest.mark.parametrize("case", sorted(MODELS))
def test_our_adapter_loads_in_peft(tmp_path, case):
    build, targets = MODELS[case]
    ours = build()
    M.add_adapter(ours, "lora", r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    save_adapter(ours, tmp_path)
    pm = PeftModel.from_pretrained(build(), tmp_path)
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5


def test_default_init_is_identity_and_matches_peft_trainable_count():
    base, ours = tiny_llama(), tiny_llama()
    x = inputs()
    M.add_adapter(ours, "lora", r=8, target_modules="all-linear")
    assert (out(base, x) - out(ours, x)).abs().max() == 0
    pm = get_peft_model(tiny_llama(), PeftLoraConfig(r=8, target_modules="all-linear"))
    peft_trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert M.count_parameters(ours)[0] == peft_trainable
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == peft_trainable


def test_merge_unmerge_unload_agree():
    m = tiny_llama()
    M.add_adapter(m, "lora", r=4, target_modules="all-linear", init_lora_weights=False)
    x = inputs()
    before = out(m, x).detach()
    weights = {n: p.detach().clone() for n, p in m.named_parameters() if "base_layer" in n}
    M.merge_adapters(m)
    assert (out(m, x) - before).abs().max() < 1e-5
    M.unmerge_adapters(m)
    for n, p in m.named_parameters():
        if n in weights:
            assert (p - weights[n]).abs().max() < 1e-6
    plain = M.unload(m)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert type(plain.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert (out(plain, x) - before).abs().max() < 1e-5


def test_named_adapters_switch_disable_delete_and_mixed_batch():
    m, base = tiny_llama(), tiny_llama()
    x = inputs()
    M.add_adapter(m, "lora", "a", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    y_a = out(m, x).detach()
    M.add_adapter(m, "lora", "b", r=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    y_b = out(m, x).detach()
    assert (y_a - y_b).abs().max() > 1e-3
    M.set_active_adapters(m, "a")
    assert (out(m, x) - y_a).abs().max() < 1e-6
    with M.disable_adapters(m):
        assert (out(m, x) - out(base, x)).abs().max() < 1e-6
    with M.mixed_batch(m, ["b", None]):
        y = out(m, x)
    assert (y[0] - y_b[0]).abs().max() < 1e-5 and (y[1] - out(base, x)[1]).abs().max() < 1e-5
    M.delete_adapter(m, "a")
    assert set(M.list_adapters(m)) == {"b"}
    M.set_active_adapters(m, "b")
    assert (out(m, x) - y_b).abs().max() < 1e-6


def test_targeting_regex_layers_and_exclude():
    m = tiny_llama()
    names = M.select_targets(m, M.make_method_config("lora", {"target_modules": r".*\.(q|v)_proj"}))
    assert names == [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"]
    cfg = M.make_method_config("lora", {"target_modules": "all-linear", "layers_to_transform": [1], "exclude_modules": ["o_proj"]})
    names = M.select_targets(m, cfg)
    assert names and all(".1." in n and "o_proj" not in n for n in names) and not any("lm_head" in n for n in names)


def test_unknown_target_names_the_modules_that_exist():
    with pytest.raises(TargetNotFound, match="q_proj"):
        M.add_adapter(tiny_llama(), "lora", target_modules=["qq_proj"])


def test_adapter_for_another_base_is_refused_and_model_left_clean(tmp_path):
    small = tiny_llama()
    M.add_adapter(small, "lora", r=4, target_modules=["q_proj"])
    save_adapter(small, tmp_path)
    other = tiny_llama(hidden_size=32, intermediate_size=64)
    with pytest.raises(AdapterMismatch, match="shape"):
        load_adapter(other, tmp_path)
    assert M.list_adapters(other) == {}
    assert not any("lora" in n for n, _ in other.named_parameters())


def test_save_is_atomic_and_keeps_old_adapter_on_failure(tmp_path, monkeypatch):
    m = tiny_llama()
    M.add_adapter(m, "lora", r=4, target_modules=["q_proj"])
    save_adapter(m, tmp_path / "ad")
    before = (tmp_path / "ad" / "adapter_model.safetensors").read_bytes()
    import tuneforge.io.adapter_files as af

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(af, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_adapter(m, tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ad"]


def test_bias_modes_and_modules_to_save_match_peft(tmp_path):
    for bias in ("all", "lora_only"):
        pm = get_peft_model(tiny_bert(num_labels=3), PeftLoraConfig(r=2, target_modules=["query"], bias=bias,
                                                                    modules_to_save=["classifier"]))
        ours = tiny_bert(num_labels=3)
        M.add_adapter(ours, "lora", r=2, target_modules=["query"], bias=bias, modules_to_save=["classifier"])
        n_peft = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        assert M.count_parameters(ours)[0] == n_peft, bias
    # modules_to_save crosses to peft with the trained head
    with torch.no_grad():
        ours.classifier.modules_to_save["default"].weight.add_(1.0)
    save_adapter(ours, tmp_path)
    pm = PeftModel.from_pretrained(tiny_bert(num_labels=3), tmp_path)
    x = inputs()
    assert (pm(input_ids=x).logits - ours(input_ids=x).logits).abs().max() < 1e-5


def test_conv2d_lora_merges():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    M.add_adapter(net, "lora", r=2, target_modules=["0", "2"], init_lora_weights=False)
    x = torch.randn(2, 3, 6, 6)
    y = net(x).detach()
    M.merge_adapters(net)
    assert (net(x) - y).abs().max() < 1e-5

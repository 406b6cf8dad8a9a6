"""BitFit, selective, full / head_only / last_k (the shared subset storage) and bottleneck adapters, beyond the
shared case-table checks: what each selects, switching and disabling without a layer, files, unload, errors."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tuneforge.methods as M
from tuneforge.errors import AdapterMismatch, ConfigError, NotMergeable, TargetNotFound
from tuneforge.io import load_adapter, save_adapter
from tuneforge.io.merge import merge
from tuneforge.models import load_model
from tuneforge.models.tiny import tiny_bert, tiny_llama


def inputs(seed=1):
    return torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(seed))


def out(model, x):
    o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def perturb(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in M.trainable_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def names(model, adapter="default"):
    return [n for n, _ in M.trainable_parameters(model, adapter)]


# ---- what each method selects --------------------------------------------------------------------------------
def test_bitfit_trains_every_bias_and_the_new_head_and_refuses_models_without_biases():
    m = tiny_bert(num_labels=3)
    M.add_adapter(m, "bitfit")
    chosen = names(m)
    assert "bert.encoder.layer.0.attention.output.LayerNorm.bias" in chosen and "classifier.weight" in chosen
    assert not any(n.endswith("weight") and not n.startswith("classifier.") for n in chosen)
    m2 = tiny_bert(num_labels=3)
    M.add_adapter(m2, "bitfit", train_head=False)
    assert all(n.endswith(".bias") for n in names(m2))
    with pytest.raises(ConfigError, match="has none") as err:
        M.add_adapter(tiny_llama(), "bitfit")
    assert err.value.key == "method"


def test_selective_matches_whole_names_and_reports_patterns_that_match_nothing():
    m = tiny_llama()
    pattern = r"model\.layers\.0\.self_attn\.(q|k)_proj\.weight"
    cfg = M.make_method_config("selective", {"trainable_patterns": [pattern]})
    assert M.select_targets(m, cfg) == [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qk"]
    with pytest.raises(ConfigError, match=r"model\.layers\.N\.mlp\.down_proj\.weight") as err:
        M.add_adapter(m, "selective", trainable_patterns=["q_proj"])  # a fullmatch: no name is just "q_proj"
    assert err.value.key == "trainable_patterns"
    with pytest.raises(ConfigError, match="not a regular expression"):
        M.make_method_config("selective", {"trainable_patterns": ["(unclosed"]})
    with pytest.raises(ConfigError):
        M.make_method_config("selective", {})


def test_head_only_and_last_k_pick_the_head_blocks_and_what_sits_above_them():
    m = tiny_llama()  # lm_head is tied to embed_tokens: the head is that one tensor
    M.add_adapter(m, "head_only")
    assert names(m) == ["model.embed_tokens.weight"]
    b = tiny_bert(num_labels=2)
    M.add_adapter(b, "head_only", head_modules=["pooler", "classifier"])
    assert names(b) == ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]
    with pytest.raises(ConfigError, match="no task head") as err:
        M.add_adapter(tiny_bert(), "head_only")
    assert err.value.key == "head_modules"
    b = tiny_bert(num_labels=2)
    M.add_adapter(b, "last_k", k=1)
    chosen = names(b)
    assert {n.split(".")[3] for n in chosen if ".layer." in n} == {"1"}
    assert "bert.pooler.dense.weight" in chosen and "classifier.weight" in chosen
    m = tiny_llama()
    M.add_adapter(m, "last_k", k=2, train_head=False)
    assert "model.embed_tokens.weight" not in names(m) and "model.norm.weight" in names(m)
    assert any(".layers.0." in n for n in names(m))
    with pytest.raises(ConfigError, match="2 transformer blocks") as err:
        M.add_adapter(tiny_llama(), "last_k", k=3)
    assert err.value.key == "k"


# ---- the shared subset storage -------------------------------------------------------------------------------
def test_subset_adapters_switch_disable_delete_and_restore_the_original_tensors():
    m, base = tiny_llama(), tiny_llama()
    x = inputs()
    originals = {n: p for n, p in m.named_parameters()}
    M.add_adapter(m, "full", "a")
    perturb(m, "a", 1)
    M.add_adapter(m, "last_k", "b", k=1)
    perturb(m, "b", 2)
    y_b = out(m, x).detach()
    M.set_active_adapters(m, "a")
    y_a = out(m, x).detach()
    assert (y_a - y_b).abs().max() > 1e-3 and (y_a - out(base, x)).abs().max() > 1e-3
    assert m.lm_head.weight is m.model.embed_tokens.weight  # still tied to the active adapter's copy
    with M.disable_adapters(m):
        assert (out(m, x) - out(base, x)).abs().max() < 1e-6
        assert all(p is originals[n] for n, p in m.named_parameters())
    assert (out(m, x) - y_a).abs().max() < 1e-6
    with M.mixed_batch(m, ["b", "b"]):
        assert (out(m, x) - y_b).abs().max() < 1e-6
    M.add_adapter(m, "lora", "lora", r=2, target_modules=["q_proj"], init_lora_weights=False)
    M.set_active_adapters(m, "a")
    with pytest.raises(ConfigError, match="separate batches"):
        with M.mixed_batch(m, ["a", "lora"]):
            pass
    assert m.model.layers[0].self_attn.q_proj.row_adapters is None  # the refusal left no layer in row mode
    M.delete_adapter(m, "lora")
    M.set_active_adapters(m, "a")
    M.delete_adapter(m, "a")
    M.set_active_adapters(m, "b")
    assert (out(m, x) - y_b).abs().max() < 1e-6
    M.delete_adapter(m, "b")
    assert all(p is originals[n] for n, p in m.named_parameters())
    assert not hasattr(m, "_tuneforge_subset")


def test_each_adapter_keeps_its_own_optimizer_updates_across_switches():
    m = tiny_bert(num_labels=2)
    M.add_adapter(m, "bitfit", "a")
    M.add_adapter(m, "bitfit", "b")
    M.mark_trainable(m)
    opt = torch.optim.SGD([p for _, p in M.trainable_parameters(m)], lr=0.5)
    x = inputs()
    for name in ("a", "b", "a"):
        M.set_active_adapters(m, name)
        out(m, x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    a = dict(M.trainable_parameters(m, "a"))
    b = dict(M.trainable_parameters(m, "b"))
    before = tiny_bert(num_labels=2).state_dict()
    moved_a, moved_b = [sum((p.detach() - before[n]).abs().sum().item() for n, p in params.items())
                        for params in (a, b)]
    assert moved_a > moved_b > 0  # a took two steps, b one


def test_subset_file_holds_the_trained_tensors_once_and_refuses_other_shapes(tmp_path):
    m = tiny_llama()
    M.add_adapter(m, "full")
    save_adapter(m, tmp_path / "full")
    body = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    assert body["peft_type"] == "FULL"
    state = M.adapter_state_dict(m)
    assert "base_model.model.model.embed_tokens.weight" in state and "base_model.model.lm_head.weight" not in state
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in m.parameters())
    with pytest.raises(AdapterMismatch, match="shape"):
        load_adapter(tiny_llama(hidden_size=32, intermediate_size=64), tmp_path / "full")
    other = tiny_llama()
    with pytest.raises(AdapterMismatch, match="has no place"):
        M.add_adapter(other, "last_k", k=1)
        M.load_adapter_state_dict(other, state)


def test_selective_sees_through_lora_and_both_train_together(tmp_path):
    m = tiny_llama()
    M.add_adapter(m, "lora", "lora", r=2, target_modules=["q_proj"], init_lora_weights=False)
    M.add_adapter(m, "selective", "sel", trainable_patterns=[r".*q_proj\.weight"])
    assert names(m, "sel") == [f"model.layers.{i}.self_attn.q_proj.base_layer.weight" for i in range(2)]
    # the file names the base model's own tensors, so it loads with or without the LoRA beside it
    assert list(M.adapter_state_dict(m, "sel")) == [f"base_model.model.model.layers.{i}.self_attn.q_proj.weight"
                                                   for i in range(2)]
    perturb(m, "sel", 3)
    M.set_active_adapters(m, ["lora", "sel"])
    x = inputs()
    y = out(m, x).detach()
    save_adapter(m, tmp_path / "sel", "sel")
    save_adapter(m, tmp_path / "lora", "lora")
    fresh = tiny_llama()
    load_adapter(fresh, tmp_path / "sel", "sel")
    load_adapter(fresh, tmp_path / "lora", "lora")
    M.set_active_adapters(fresh, ["lora", "sel"])
    assert (out(fresh, x) - y).abs().max() < 1e-5


def test_full_unload_gives_a_plain_transformers_model(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    m = load_model(str(tmp_path / "base"), device="cpu")
    M.add_adapter(m, "full")
    perturb(m, "default", 4)
    x = inputs()
    y = out(m, x).detach()
    save_adapter(m, tmp_path / "adapter", base_model_name=str(tmp_path / "base"))
    merge(None, tmp_path / "adapter", tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert (out(plain, x) - y).abs().max() < 1e-5
    kept = M.unload(m, merge=True)
    assert (out(kept, x) - y).abs().max() < 1e-6 and M.list_adapters(kept) == {}
    dropped = tiny_llama()
    M.add_adapter(dropped, "selective", trainable_patterns=[r".*norm\.weight"])
    perturb(dropped, "default", 5)
    assert (out(M.unload(dropped, merge=False), x) - out(tiny_llama(), x)).abs().max() < 1e-6


# ---- bottleneck adapters -------------------------------------------------------------------------------------
def test_bottleneck_sites_sizes_and_activation_follow_the_config():
    b = tiny_bert()
    M.add_adapter(b, "bottleneck", config="houlsby")
    wrapped = sorted(n for n, mod in b.named_modules() if hasattr(mod, "adapter_down"))
    assert wrapped == [f"encoder.layer.{i}.{s}" for i in range(2) for s in ("attention.output.dense", "output.dense")]
    layer = b.encoder.layer[0].output.dense
    assert layer.adapter_down["default"].weight.shape == (4, 64)  # 64 // reduction_factor 16
    assert layer.non_linearity["default"] == "silu"
    p = tiny_bert()
    M.add_adapter(p, "bottleneck", bottleneck_size=5)
    wrapped = sorted(n for n, mod in p.named_modules() if hasattr(mod, "adapter_down"))
    assert wrapped == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    assert p.encoder.layer[0].output.dense.non_linearity["default"] == "relu"
    assert p.encoder.layer[0].output.dense.adapter_up["default"].weight.shape == (64, 5)


def test_bottleneck_output_is_the_residual_mlp_and_cannot_merge():
    m = tiny_llama()
    M.add_adapter(m, "bottleneck", config="pfeiffer", non_linearity="gelu", reduction_factor=8)
    perturb(m, "default", 6)
    layer = m.model.layers[0].mlp.down_proj
    h_in = torch.randn(3, 128)
    h = layer.base_layer(h_in)
    down, up = layer.adapter_down["default"], layer.adapter_up["default"]
    expected = h + up(torch.nn.functional.gelu(down(h)))
    assert (layer(h_in) - expected).abs().max() < 1e-6
    with pytest.raises(NotMergeable, match="non-linearity"):
        M.merge_adapters(m)
    plain = M.unload(m, merge=False)
    assert type(plain.model.layers[0].mlp.down_proj) is torch.nn.Linear


def test_bottleneck_needs_targets_on_unknown_architectures():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    with pytest.raises(TargetNotFound, match="no default sites"):
        M.add_adapter(net, "bottleneck")
    M.add_adapter(net, "bottleneck", target_modules=["2"], bottleneck_size=2)
    assert M.count_parameters(net)[0] == 2 * 8 * 2 + 2 + 8
    for key, value in [("config", "lora"), ("reduction_factor", 0), ("non_linearity", "tanh")]:
        with pytest.raises(ConfigError) as err:
            M.make_method_config("bottleneck", {key: value})
        assert err.value.key == key

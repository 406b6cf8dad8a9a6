"""Combining adapters equals peft's add_weighted_adapter (linear, cat, svd); task arithmetic; several LoRAs merged and
unmerged restore the base."""
import pytest
import torch
from peft import PeftModel

import tuneforge.methods as M
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.io import load_adapter, save_adapter
from tuneforge.methods.lora import LoraLayer
from tuneforge.models.tiny import tiny_bert, tiny_llama


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()


# model, targets of a, targets of b: overlapping but different sets, so some layers hold only one adapter
CASES = {
    "llama": (tiny_llama, ["q_proj", "v_proj"], ["q_proj", "down_proj"]),
    "llama-embed": (tiny_llama, ["embed_tokens", "q_proj"], ["embed_tokens", "o_proj"]),
    "gpt2-conv1d": (tiny_gpt2, ["c_attn", "c_proj"], ["c_attn", "c_fc"]),
}
WEIGHTS = {"a": 0.7, "b": -0.4}


def inputs():
    return torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(1))


def lora_layers(model, name):
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and m.has_adapter(name)}


def both(tmp_path, case, r_b, **fields):
    """The same two random adapters a, b in our model and in a peft model (read from our files)."""
    build, targets_a, targets_b = CASES[case]
    ours = build()
    torch.manual_seed(0)
    M.add_adapter(ours, "lora", "a", r=4, lora_alpha=8, target_modules=targets_a, init_lora_weights=False, **fields)
    M.add_adapter(ours, "lora", "b", r=r_b, lora_alpha=16, target_modules=targets_b, init_lora_weights=False, **fields)
    for name in "ab":
        save_adapter(ours, tmp_path / name, name)
    theirs = PeftModel.from_pretrained(build(), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    return ours, theirs


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("how", ["linear", "cat", "svd"])
def test_combine_equals_peft_add_weighted_adapter(tmp_path, case, how):
    ours, theirs = both(tmp_path, case, r_b=4 if how == "linear" else 2)
    M.combine(ours, WEIGHTS, "c", how=how)
    theirs.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "c", combination_type=how)
    theirs.set_adapter("c")
    assert M.active_adapters(ours) == ["c"]
    layers = lora_layers(ours, "c")
    assert set(layers) == set(lora_layers(ours, "a")) | set(lora_layers(ours, "b"))
    for name, layer in layers.items():
        peft_layer = theirs.get_submodule("base_model.model." + name)
        assert layer.scaling["c"] == peft_layer.scaling["c"] == 1.0
        expected = peft_layer.get_delta_weight("c")
        assert (layer.delta_weight("c") - expected).abs().max() < 1e-5, name
        if how == "cat":  # exact: the weighted sum of the deltas
            exact = sum(w * layer.delta_weight(n) for n, w in WEIGHTS.items() if layer.has_adapter(n))
            assert (layer.delta_weight("c") - exact).abs().max() < 1e-5, name
    x = inputs()
    with torch.no_grad():
        y_ours, y_peft = ours(input_ids=x).logits, theirs(input_ids=x).logits
    assert (y_ours - y_peft).abs().max() < 1e-5
    save_adapter(ours, tmp_path / "c", "c")  # the file is a peft LoRA file of the new rank
    again = PeftModel.from_pretrained(CASES[case][0](), tmp_path / "c")
    with torch.no_grad():
        assert (again(input_ids=x).logits - y_ours).abs().max() < 1e-5


def test_svd_to_a_target_rank_is_the_truncated_svd_of_the_sum(tmp_path):
    ours, theirs = both(tmp_path, "llama", r_b=2)
    M.combine(ours, WEIGHTS, "c3", how="svd", rank=3)
    theirs.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "c3", combination_type="svd", svd_rank=3)
    for name, layer in lora_layers(ours, "c3").items():
        assert layer.r["c3"] == 3
        exact = sum(w * layer.delta_weight(n) for n, w in WEIGHTS.items() if layer.has_adapter(n))
        S = torch.linalg.svdvals(exact)
        got = layer.delta_weight("c3")
        assert abs(torch.linalg.matrix_norm(exact - got) - S[3:].norm()) < 1e-4  # Eckart-Young: the best rank 3
        peft_delta = theirs.get_submodule("base_model.model." + name).get_delta_weight("c3")
        assert (got - peft_delta).abs().max() < 1e-5


def test_task_arithmetic_negate_and_add_give_the_signed_deltas():
    m = tiny_llama()
    torch.manual_seed(0)
    M.add_adapter(m, "lora", "a", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    M.add_adapter(m, "rslora", "b", r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    M.combine(m, {"a": -1.0}, "not_a", how="cat")  # one adapter: linear, exact (peft's rule)
    M.combine(m, {"a": 1.0}, "a_r2", how="svd", rank=2)  # one adapter re-projected to a lower rank
    for layer in lora_layers(m, "a").values():
        assert (layer.delta_weight("not_a") + layer.delta_weight("a")).abs().max() < 1e-6
        S = torch.linalg.svdvals(layer.delta_weight("a"))
        assert layer.r["a_r2"] == 2
        assert abs(torch.linalg.matrix_norm(layer.delta_weight("a") - layer.delta_weight("a_r2")) - S[2:].norm()) < 1e-4
    M.combine(m, {"a": 1.0, "b": -1.0}, "a_minus_b")
    for layer in lora_layers(m, "a_minus_b").values():
        exact = layer.delta_weight("a") - (layer.delta_weight("b") if layer.has_adapter("b") else 0)
        assert (layer.delta_weight("a_minus_b") - exact).abs().max() < 1e-6
    x = inputs()
    base = tiny_llama()
    with torch.no_grad():
        M.set_active_adapters(m, ["a", "not_a"])  # a and its negation cancel
        assert (m(input_ids=x).logits - base(input_ids=x).logits).abs().max() < 1e-5


def test_rslora_result_has_scaling_one_and_equals_the_weighted_sum():
    """peft keeps lora_alpha = r with use_rslora, which scales its result by sqrt(r); ours stays exact."""
    m = tiny_llama()
    torch.manual_seed(0)
    M.add_adapter(m, "rslora", "a", r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    M.add_adapter(m, "rslora", "b", r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    cfg = M.combine(m, WEIGHTS, "c", how="cat")
    assert type(cfg).method == "rslora" and cfg.use_rslora and cfg.r == 8
    for layer in lora_layers(m, "c").values():
        assert abs(layer.scaling["c"] - 1.0) < 1e-12
        exact = sum(w * layer.delta_weight(n) for n, w in WEIGHTS.items())
        assert (layer.delta_weight("c") - exact).abs().max() < 1e-6


def test_dora_combines_by_svd_of_its_real_change():
    m = tiny_llama()
    torch.manual_seed(0)
    M.add_adapter(m, "dora", "d", r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    with torch.no_grad():
        for layer in lora_layers(m, "d").values():
            layer.lora_magnitude_vector["d"].mul_(1.1)  # a trained magnitude: W's rows rescale too
    x = inputs()
    with torch.no_grad():
        y_d = m(input_ids=x).logits
    with pytest.raises(TuneforgeError, match="only how='svd'"):
        M.combine(m, {"d": 1.0}, "cat", how="cat")
    cfg = M.combine(m, {"d": 1.0}, "d_full", how="svd", rank=64)  # full rank: exact
    assert type(cfg).method == "dora"
    with torch.no_grad():
        assert (m(input_ids=x).logits - y_d).abs().max() < 1e-4


def test_several_loras_merged_into_the_base_unmerge_to_the_original_weights():
    m = tiny_llama()
    torch.manual_seed(0)
    for name, targets in [("a", "all-linear"), ("b", ["q_proj", "v_proj"]), ("c", ["down_proj", "q_proj"])]:
        M.add_adapter(m, "lora", name, r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    original = {n: p.detach().clone() for n, p in m.named_parameters() if "lora_" not in n}
    M.set_active_adapters(m, ["a", "b", "c"])
    x = inputs()
    with torch.no_grad():
        y = m(input_ids=x).logits
        M.merge_adapters(m)
        assert (m(input_ids=x).logits - y).abs().max() < 1e-5
    moved = [n for n, p in m.named_parameters() if n in original and not torch.equal(p, original[n])]
    assert moved
    M.unmerge_adapters(m)
    for n, p in m.named_parameters():
        if n in original:
            assert (p - original[n]).abs().max() < 1e-6, n


def test_a_trained_head_is_copied_and_bad_requests_leave_the_model_as_it_was():
    m = tiny_bert(num_labels=2)
    torch.manual_seed(0)
    M.add_adapter(m, "lora", "a", r=4, target_modules=["query", "value"], init_lora_weights=False,
                  modules_to_save=["classifier"])
    M.add_adapter(m, "lora", "b", r=2, target_modules=["query"], init_lora_weights=False)
    M.add_adapter(m, "ia3", "i", target_modules=["key"], feedforward_modules=[])
    with torch.no_grad():
        m.classifier.modules_to_save["a"].weight.add_(1.0)
    M.set_active_adapters(m, "a")
    before = (M.list_adapters(m), M.active_adapters(m))
    for bad, kwargs, error in [
        ({"a": 1.0, "i": 1.0}, {}, "ia3: combine works on LoRA-family"),
        ({"a": 1.0, "b": 1.0}, {"how": "linear"}, "same rank|one rank"),
        ({"a": 1.0}, {"how": "cat", "rank": 2}, "rank"),
        ({"a": 1.0, "nope": 1.0}, {}, "no adapter named 'nope'"),
        ({"a": float("nan")}, {}, "finite"),
        ({}, {}, "at least one"),
        ({"a": 1.0}, {"how": "ties"}, "how must be"),
        ({"a": 1.0}, {"adapter_name": "b"}, "already exists"),
    ]:
        with pytest.raises((TuneforgeError, ConfigError), match=error):
            M.combine(m, bad, **kwargs)
        assert (M.list_adapters(m), M.active_adapters(m)) == before
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    M.combine(m, {"a": 0.5, "b": 0.5}, "ab", how="svd")
    assert [n for n, p in m.named_parameters() if p.requires_grad] == trainable  # the result is frozen
    assert torch.equal(m.classifier.modules_to_save["ab"].weight, m.classifier.modules_to_save["a"].weight)


def test_pissa_is_refused_with_the_conversion_and_converted_it_combines(tmp_path):
    from tuneforge.methods.pissa import pissa_to_lora

    m = tiny_llama()
    M.add_adapter(m, "pissa", "p", r=2, target_modules=["q_proj"])
    with pytest.raises(TuneforgeError, match="pissa_to_lora"):
        M.combine(m, {"p": 1.0}, "c")
    with torch.no_grad():
        for layer in lora_layers(m, "p").values():
            layer.lora_B["p"].weight.add_(0.1)  # trained
    pissa_to_lora(m, "p")
    x = inputs()
    with torch.no_grad():
        y = m(input_ids=x).logits
    M.combine(m, {"p": 1.0}, "c")
    with torch.no_grad():
        assert (m(input_ids=x).logits - y).abs().max() < 1e-5


def test_combined_adapter_loads_back_as_lora(tmp_path):
    m = tiny_llama()
    torch.manual_seed(0)
    M.add_adapter(m, "lora_fa", "a", r=2, target_modules=["q_proj"], init_lora_weights=False)
    M.add_adapter(m, "lora_fa", "b", r=2, target_modules=["q_proj"], init_lora_weights=False)
    M.combine(m, {"a": 1.0, "b": 1.0}, "c", how="cat")
    save_adapter(m, tmp_path, "c")
    fresh = tiny_llama()
    load_adapter(fresh, tmp_path)
    x = inputs()
    with torch.no_grad():
        assert (fresh(input_ids=x).logits - m(input_ids=x).logits).abs().max() < 1e-5


class TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_conv2d_combinations_equal_peft(tmp_path):
    ours = TinyConvNet()
    M.add_adapter(ours, "lora", "a", r=4, lora_alpha=8, target_modules=["c1", "c2"], init_lora_weights=False)
    M.add_adapter(ours, "lora", "b", r=4, lora_alpha=16, target_modules=["c1"], init_lora_weights=False)
    for name in "ab":
        save_adapter(ours, tmp_path / name, name)
    theirs = PeftModel.from_pretrained(TinyConvNet(), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    for how in ("linear", "cat", "svd"):
        M.combine(ours, WEIGHTS, how, how=how)
        theirs.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), how, combination_type=how)
        theirs.set_adapter(how)
        with torch.no_grad():
            assert (ours(x) - theirs.base_model.model(x)).abs().max() < 1e-5, how

"""Switching adapters reads a cached list of adapter layers; the cache follows every change of the module tree."""
import torch

import tuneforge.methods as M
from tuneforge.methods.targeting import adapter_modules
from tuneforge.models.tiny import tiny_llama


def active_by_layer(model):
    return {n: list(m.active_adapters) for n, m in adapter_modules(model)}


def test_the_cache_follows_adapters_added_deleted_and_modules_replaced_by_other_code():
    m = tiny_llama()
    M.add_adapter(m, "lora", "a", r=2, target_modules=["q_proj", "v_proj"])
    M.add_adapter(m, "lora", "b", r=2, target_modules=["q_proj"])
    M.set_active_adapters(m, "b")
    assert adapter_modules(m) is adapter_modules(m)  # cached
    M.delete_adapter(m, "b")  # q_proj keeps its layer (a is on it) ...
    M.add_adapter(m, "lora", "b", r=2, target_modules=["k_proj"])  # ... and b comes back on new layers
    M.set_active_adapters(m, "b")
    seen = active_by_layer(m)
    assert {n for n, act in seen.items() if act == ["b"]} == {f"model.layers.{i}.self_attn.k_proj" for i in range(2)}
    assert all(act == [] for n, act in seen.items() if "k_proj" not in n)
    attn = m.model.layers[0].self_attn
    attn.q_proj = attn.q_proj.base_layer  # replaced behind tuneforge's back
    assert "model.layers.0.self_attn.q_proj" not in dict(adapter_modules(m))
    M.set_active_adapters(m, "a")
    assert active_by_layer(m)["model.layers.1.self_attn.q_proj"] == ["a"]


def test_switching_changes_outputs_exactly_as_a_fresh_single_adapter_model():
    x = torch.randint(0, 250, (2, 7), generator=torch.Generator().manual_seed(1))
    m = tiny_llama()
    torch.manual_seed(0)
    for i in range(4):
        M.add_adapter(m, "lora", f"a{i}", r=4, target_modules="all-linear", init_lora_weights=False)
    with torch.no_grad():
        ys = []
        for i in range(4):
            M.set_active_adapters(m, f"a{i}")
            ys.append(m(input_ids=x).logits)
        for i in (2, 0, 3, 1):
            M.set_active_adapters(m, f"a{i}")
            assert torch.equal(m(input_ids=x).logits, ys[i])
    assert all((ys[i] - ys[0]).abs().max() > 1e-3 for i in range(1, 4))

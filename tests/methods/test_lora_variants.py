"""The LoRA variants against HF peft (DoRA, rsLoRA, PiSSA, VeRA, LoRA-FA's optimizer, LoRA+'s groups) and, for
Delta-LoRA (not in peft), against a hand-written two-step run of the paper's algorithm."""
import json

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, VeraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

import tuneforge.methods as M
from tuneforge.errors import ConfigError
from tuneforge.io import load_adapter, save_adapter
from tuneforge.io.adapter_files import method_for_peft_config
from tuneforge.methods.pissa import pissa_to_lora
from tuneforge.models.tiny import tiny_bert, tiny_llama

from .test_lora_oracle import inputs, out, tiny_gpt2

MODELS = {
    "llama": (tiny_llama, ["q_proj", "v_proj", "down_proj"]),
    "gpt2-conv1d": (tiny_gpt2, ["c_attn", "c_fc"]),
    "bert": (tiny_bert, ["query", "value", "dense"]),
}


def grads(model, marker):
    """Gradients by name; peft's DoRA magnitude sits in a module (".weight"), ours is the parameter itself."""
    return {n.replace("base_model.model.", "").replace("vector.default.weight", "vector.default"): p.grad.clone()
            for n, p in model.named_parameters() if marker in n and p.grad is not None}


def assert_same_outputs_and_grads(pm, ours, marker, x=None):
    x = inputs() if x is None else x
    y_peft, y_ours = out(pm, x), out(ours, x)
    assert (y_peft - y_ours).abs().max() < 1e-5
    y_peft.pow(2).mean().backward()
    y_ours.pow(2).mean().backward()
    gp, go = grads(pm, marker), grads(ours, marker)
    assert gp.keys() == go.keys() and gp
    for k in gp:
        assert (gp[k] - go[k]).abs().max() < 1e-5, k


def noise(model, marker, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if marker in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def file_keys(path):
    return {k: tuple(v.shape) for k, v in load_file(str(path / "adapter_model.safetensors")).items()}


# ---- DoRA ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(MODELS))
def test_dora_peft_adapter_loads_into_ours_with_equal_outputs_and_grads(tmp_path, case):
    build, targets = MODELS[case]
    pm = get_peft_model(build(), PeftLoraConfig(r=4, lora_alpha=16, target_modules=targets, use_dora=True,
                                                init_lora_weights=False))
    noise(pm, "lora_magnitude_vector")
    pm.save_pretrained(tmp_path)
    ours = build()
    assert load_adapter(ours, tmp_path, trainable=True).method == "dora"
    assert_same_outputs_and_grads(pm, ours, "lora_")


@pytest.mark.parametrize("case", sorted(MODELS))
def test_dora_our_adapter_is_peft_file_and_loads_in_peft(tmp_path, case):
    build, targets = MODELS[case]
    ours = build()
    M.add_adapter(ours, "dora", r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    noise(ours, "lora_magnitude_vector")
    save_adapter(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["use_dora"] is True
    pm = get_peft_model(build(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True))
    pm.save_pretrained(tmp_path / "peft")
    assert file_keys(tmp_path / "ours") == file_keys(tmp_path / "peft")
    pm = PeftModel.from_pretrained(build(), tmp_path / "ours")
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5


def test_dora_with_dropout_in_training_matches_peft():
    targets = ["query", "value"]
    pm = get_peft_model(tiny_bert(), PeftLoraConfig(r=4, target_modules=targets, use_dora=True, lora_dropout=0.3,
                                                    init_lora_weights=False))
    ours = tiny_bert()
    M.add_adapter(ours, "dora", r=4, target_modules=targets, lora_dropout=0.3, init_lora_weights=False)
    M.load_adapter_state_dict(ours, get_peft_model_state_dict(pm))
    pm.train()
    ours.train()
    x = inputs()
    torch.manual_seed(5)
    y_peft = out(pm, x)
    torch.manual_seed(5)
    y_ours = out(ours, x)
    assert (y_peft - y_ours).abs().max() < 1e-5


def test_dora_merge_matches_peft_merge():
    targets = MODELS["gpt2-conv1d"][1]
    pm = get_peft_model(tiny_gpt2(), PeftLoraConfig(r=4, target_modules=targets, use_dora=True,
                                                    init_lora_weights=False))
    noise(pm, "lora_magnitude_vector")
    ours = tiny_gpt2()
    M.add_adapter(ours, "dora", r=4, target_modules=targets, init_lora_weights=False)
    M.load_adapter_state_dict(ours, get_peft_model_state_dict(pm))
    merged_peft, merged_ours = pm.merge_and_unload(), M.unload(ours)
    for (n, a), (_, b) in zip(merged_peft.named_parameters(), merged_ours.named_parameters()):
        assert (a - b).abs().max() < 1e-5, n


# ---- rsLoRA, LoRA+, LoRA-FA, Delta-LoRA write plain LoRA files; dispatch of files to methods ------------------------
def test_files_dispatch_to_the_method_that_claims_them():
    names = {
        "lora": {"peft_type": "LORA", "use_dora": False, "init_lora_weights": True},
        "dora": {"peft_type": "LORA", "use_dora": True},
        "pissa": {"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"},
        "vera": {"peft_type": "VERA"},
    }
    for name, body in names.items():
        assert method_for_peft_config(body).name == name


@pytest.mark.parametrize("method", ["rslora", "loraplus", "lora_fa", "delta_lora"])
def test_variants_save_plain_lora_files_that_peft_reads_cleanly(tmp_path, method, recwarn):
    ours = tiny_llama()
    M.add_adapter(ours, method, r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    save_adapter(ours, tmp_path)
    body = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(body) <= set(PeftLoraConfig.__dataclass_fields__)
    pm = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert not [w for w in recwarn if "Unexpected keyword" in str(w.message)]
    assert body["use_rslora"] is (method == "rslora")
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5
    assert load_adapter(tiny_llama(), tmp_path).method == "lora"


def test_loraplus_groups_equal_peft_create_loraplus_optimizer():
    from peft.optimizers import create_loraplus_optimizer

    targets = ["query", "value", "word_embeddings"]
    pm = get_peft_model(tiny_bert(), PeftLoraConfig(r=4, target_modules=targets, bias="lora_only"))
    opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=8.0, loraplus_weight_decay=0.1)
    names = {id(p): n.removeprefix("base_model.model.") for n, p in pm.named_parameters()}
    peft_settings = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    ours = tiny_bert()
    M.add_adapter(ours, "loraplus", r=4, target_modules=targets, bias="lora_only", loraplus_lr_ratio=8.0)
    names = {id(p): n for n, p in ours.named_parameters()}
    our_settings = {names[id(p)]: (g["lr"], g["weight_decay"])
                    for g in M.optimizer_groups(ours, 1e-3, 0.1) for p in g["params"]}
    assert our_settings == peft_settings
    assert {lr for lr, _ in our_settings.values()} == {1e-3, 8e-3, 1e-6}


def lorafa_models(targets=("q_proj", "v_proj")):
    pm = get_peft_model(tiny_llama(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    ours = tiny_llama()
    M.add_adapter(ours, "lora_fa", r=4, lora_alpha=8, target_modules=list(targets))
    M.load_adapter_state_dict(ours, get_peft_model_state_dict(pm))
    return pm, ours


def test_lora_fa_trains_only_b_with_the_projected_gradient():
    ours = tiny_llama()
    M.add_adapter(ours, "lora_fa", r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    plain = tiny_llama()
    M.add_adapter(plain, "lora", r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    M.load_adapter_state_dict(plain, M.adapter_state_dict(ours))
    assert all("lora_B" in n for n, _ in M.trainable_parameters(ours))
    x = inputs()
    out(ours, x).pow(2).mean().backward()
    out(plain, x).pow(2).mean().backward()
    layer = ours.model.layers[0].self_attn.q_proj
    A, s = layer.lora_A["default"].weight, layer.scaling["default"]
    expected = plain.model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad @ torch.linalg.pinv(A @ A.T) / s**2
    assert (layer.lora_B["default"].weight.grad - expected).abs().max() < 1e-5
    assert A.grad is None


def test_lora_fa_steps_equal_peft_lorafa_optimizer(monkeypatch):
    from peft.optimizers import create_lorafa_optimizer
    import peft.optimizers.lorafa as lorafa

    monkeypatch.setattr(lorafa, "is_bf16_available", lambda: False)  # peft projects in bf16 where it can
    pm, ours = lorafa_models()
    opt_peft = create_lorafa_optimizer(pm, r=4, lora_alpha=8, lr=1e-2)
    opt_peft.param_groups[0]["eps"] = 1e-12  # the two AdamWs place eps differently; make it play no part
    opt_ours = torch.optim.AdamW(M.optimizer_groups(ours, 1e-2, 0.0), lr=1e-2, eps=1e-12, weight_decay=0.0)
    for step in range(3):
        for model, opt in ((pm, opt_peft), (ours, opt_ours)):
            opt.zero_grad()
            out(model, inputs(step)).log_softmax(-1)[..., 0].mean().backward()
            opt.step()
    mine = {n: p for n, p in ours.named_parameters() if "lora_" in n}
    theirs = {n.removeprefix("base_model.model."): p for n, p in pm.named_parameters() if "lora_" in n}
    assert mine.keys() == theirs.keys()
    for n in mine:
        assert (mine[n] - theirs[n]).abs().max() < 1e-5, n
    assert any(p.abs().max() > 1e-3 for n, p in mine.items() if "lora_B" in n)


# ---- VeRA --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(MODELS))
@pytest.mark.parametrize("save_projection", [True, False])
def test_vera_peft_adapter_loads_into_ours_with_equal_outputs_and_grads(tmp_path, case, save_projection):
    build, targets = MODELS[case]
    pm = get_peft_model(build(), VeraConfig(r=8, target_modules=targets, init_weights=False,
                                            save_projection=save_projection))
    pm.save_pretrained(tmp_path)
    ours = build()
    load_adapter(ours, tmp_path, trainable=True)
    assert_same_outputs_and_grads(pm, ours, "vera_lambda")


@pytest.mark.parametrize("save_projection", [True, False])
def test_vera_our_adapter_is_peft_file_and_loads_in_peft(tmp_path, save_projection):
    build, targets = MODELS["llama"]
    ours = build()
    M.add_adapter(ours, "vera", r=8, target_modules=targets, init_weights=False, save_projection=save_projection)
    save_adapter(ours, tmp_path / "ours")
    get_peft_model(build(), VeraConfig(r=8, target_modules=targets, save_projection=save_projection)).save_pretrained(
        tmp_path / "peft")
    assert file_keys(tmp_path / "ours") == file_keys(tmp_path / "peft")
    pm = PeftModel.from_pretrained(build(), tmp_path / "ours")
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5


def test_vera_layers_share_one_projection_and_merge():
    model = tiny_llama()
    M.add_adapter(model, "vera", r=8, target_modules=["q_proj", "down_proj"], init_weights=False)
    layers = [m for m in model.modules() if hasattr(m, "vera_projection")]
    assert len(layers) == 4 and len({id(m.vera_projection["default"]) for m in layers}) == 1
    x = inputs()
    y = out(model, x).detach()
    M.merge_adapters(model)
    assert (out(model, x) - y).abs().max() < 1e-5


# ---- PiSSA -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["llama", "gpt2-conv1d"])
def test_pissa_init_equals_peft(case):
    build, targets = MODELS[case]
    pm = get_peft_model(build(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights="pissa"))
    ours = build()
    M.add_adapter(ours, "pissa", r=4, lora_alpha=8, target_modules=targets)
    theirs = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    for name, layer in ours.named_modules():
        if not hasattr(layer, "pissa_initial"):
            continue
        other = theirs.pop(name)
        ba = lambda m: m.lora_B["default"].weight @ m.lora_A["default"].weight  # noqa: E731 (SVD signs may differ)
        assert (ba(layer) - ba(other)).abs().max() < 1e-5
        assert (layer.base_layer.weight - other.base_layer.weight).abs().max() < 1e-5
    assert not theirs
    x = inputs()
    assert (out(pm, x) - out(ours, x)).abs().max() < 1e-5


def test_pissa_files_cross_both_ways(tmp_path):
    build, targets = MODELS["llama"]
    pm = get_peft_model(build(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights="pissa"))
    noise(pm, "lora_")
    pm.save_pretrained(tmp_path / "peft")
    ours = build()
    assert load_adapter(ours, tmp_path / "peft", trainable=True).method == "pissa"
    assert_same_outputs_and_grads(pm, ours, "lora_")
    save_adapter(ours, tmp_path / "ours")
    back = PeftModel.from_pretrained(build(), tmp_path / "ours")
    x = inputs()
    assert (out(back, x) - out(ours, x)).abs().max() < 1e-5


def test_pissa_to_lora_restores_base_and_equals_peft_conversion(tmp_path):
    build, targets = MODELS["llama"]
    cfg = dict(r=4, lora_alpha=8, target_modules=targets)
    original = build()
    pm = get_peft_model(build(), PeftLoraConfig(init_lora_weights="pissa", **cfg))
    pm.peft_config["default"].init_lora_weights = True  # how peft asks for the initial adapter to be saved
    pm.save_pretrained(tmp_path / "initial")
    pm.peft_config["default"].init_lora_weights = "pissa"
    noise(pm, "lora_")
    pm.save_pretrained(tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    ours = build()
    load_adapter(ours, tmp_path / "converted")  # the same trained adapter, as peft converted it
    mine = build()
    M.add_adapter(mine, "pissa", **cfg)
    M.load_adapter_state_dict(mine, get_peft_model_state_dict(pm))
    x = inputs()
    y = out(mine, x).detach()
    lora_cfg = pissa_to_lora(mine)
    assert lora_cfg.r == 8 and type(lora_cfg).method == "lora"
    assert (out(mine, x) - y).abs().max() < 1e-5
    assert (out(ours, x) - y).abs().max() < 1e-5
    with M.disable_adapters(mine):
        assert (out(mine, x) - out(original, x)).abs().max() < 1e-5
    save_adapter(mine, tmp_path / "ours")
    assert file_keys(tmp_path / "ours") == file_keys(tmp_path / "converted")
    assert (out(PeftModel.from_pretrained(build(), tmp_path / "ours"), x) - y).abs().max() < 1e-5


def test_pissa_delete_restores_base_and_config_errors():
    model, original = tiny_llama(), tiny_llama()
    M.add_adapter(model, "pissa", r=4, target_modules=["q_proj"])
    M.delete_adapter(model, "default")
    for (n, a), (_, b) in zip(model.named_parameters(), original.named_parameters()):
        assert (a - b).abs().max() < 1e-5, n
    with pytest.raises(ConfigError, match="pissa_niter_K"):
        M.make_method_config("pissa", {"init_lora_weights": "gaussian"})
    with pytest.raises(ConfigError, match="pissa"):
        M.make_method_config("lora", {"init_lora_weights": "pissa"})


# ---- Delta-LoRA --------------------------------------------------------------------------------------------------
def two_layer_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def delta_lora_reference(net, factors, xs, *, s, lam, start, lr):
    """The paper's algorithm written out: SGD on A, B, then W += lam * s * (B' A' - B A) from step `start` on."""
    Ws = [net[0].weight.detach().clone(), net[2].weight.detach().clone()]
    bs = [net[0].bias.detach(), net[2].bias.detach()]
    AB = [(A.clone().requires_grad_(), B.clone().requires_grad_()) for A, B in factors]

    def forward(x):
        h = x
        for i, (W, b, (A, B)) in enumerate(zip(Ws, bs, AB)):
            h = h @ W.T + b + s * (h @ A.T @ B.T)
            h = torch.tanh(h) if i == 0 else h
        return h

    for t, x in enumerate(xs):
        forward(x).pow(2).sum().backward()
        before = [(B @ A).detach() for A, B in AB]
        with torch.no_grad():
            for A, B in AB:
                A -= lr * A.grad
                B -= lr * B.grad
                A.grad = B.grad = None
            if t >= start:
                for W, (A, B), old in zip(Ws, AB, before):
                    W += lam * s * (B @ A - old)
    return forward, Ws, AB


@pytest.mark.parametrize("start", [0, 1])
def test_delta_lora_two_steps_equal_the_papers_in_place_update(tmp_path, start):
    net = two_layer_net()
    M.add_adapter(net, "delta_lora", r=2, lora_alpha=4, target_modules=["0", "2"], init_lora_weights=False,
                  delta_lora_lambda=0.5, update_start_step=start)
    layers = [net[0], net[2]]
    factors = [(m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
               for m in layers]
    xs = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ref_forward, Ws, AB = delta_lora_reference(two_layer_net(), factors, xs, s=2.0, lam=0.5, start=start, lr=0.05)
    opt = torch.optim.SGD([p for _, p in M.trainable_parameters(net)], lr=0.05)
    for x in xs:
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
        M.on_optimizer_step(net)
    for m, (A, B) in zip(layers, AB):
        torch.testing.assert_close(m.lora_A["default"].weight, A, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.lora_B["default"].weight, B, rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 6)
    y = net(x).detach()
    assert (y - ref_forward(x)).abs().max() < 1e-5
    with M.disable_adapters(net):
        assert (net(x) - two_layer_net()(x)).abs().max() == 0  # W itself never moved
    save_adapter(net, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4  # [A; A_K] stacked
    fresh = two_layer_net()
    load_adapter(fresh, tmp_path)
    assert (fresh(x) - y).abs().max() < 1e-5
    assert (PeftModel.from_pretrained(two_layer_net(), tmp_path).base_model(x) - y).abs().max() < 1e-5
    M.merge_adapters(net)
    for m, W, (A, B) in zip(layers, Ws, AB):
        torch.testing.assert_close(m.base_layer.weight, W + 2.0 * B @ A, rtol=1e-5, atol=1e-5)


def test_delta_lora_zero_init_saves_rank_r_and_refuses_dropout(tmp_path):
    model = tiny_llama()
    M.add_adapter(model, "delta_lora", r=4, update_start_step=0, target_modules=["q_proj"])
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4
    with pytest.raises(ConfigError) as err:
        M.make_method_config("delta_lora", {"lora_dropout": 0.1})
    assert err.value.key == "lora_dropout"

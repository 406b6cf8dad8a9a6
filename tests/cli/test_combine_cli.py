"""`tuneforge combine` end to end on a tiny base saved to disk: the folder it writes loads in peft and in ours."""
import json

import pytest
import torch

import tuneforge.methods as M
from tuneforge.cli.main import main
from tuneforge.errors import TuneforgeError
from tuneforge.io import load_adapter, save_adapter
from tuneforge.io.combine import combine_adapters
from tuneforge.methods.pissa import pissa_to_lora
from tuneforge.models import load_model


@pytest.fixture
def adapters(tmp_path, tiny_base_dir):
    """Two random LoRA adapters (ranks 4 and 2) and a PiSSA one, saved for the tiny base on disk."""
    model = load_model(tiny_base_dir, device="cpu")
    torch.manual_seed(0)
    M.add_adapter(model, "lora", "a", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    M.add_adapter(model, "lora", "b", r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"],
                  init_lora_weights=False)
    for name in "ab":
        save_adapter(model, tmp_path / name, name)
    pissa = load_model(tiny_base_dir, device="cpu")
    M.add_adapter(pissa, "pissa", "p", r=2, target_modules=["q_proj"])
    with torch.no_grad():
        for _, layer in M.method_for("pissa").layers(pissa, "p"):
            layer.lora_B["p"].weight.add_(0.05)
    save_adapter(pissa, tmp_path / "p", "p")
    return tmp_path / "a", tmp_path / "b", tmp_path / "p"


def run(args):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code or 0


def deltas(model, name):
    return {n: layer.delta_weight(name) for n, layer in M.method_for("lora").layers(model, name)}


def test_cli_writes_the_weighted_sum_that_peft_loads(tmp_path, tiny_base_dir, adapters, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a, b, _ = adapters
    out = tmp_path / "a_minus_b"
    assert run(["combine", str(a), str(b), "--weights", "1,-0.5", "--how", "cat", "--out", str(out)]) == 0
    assert "combined adapter written" in capsys.readouterr().out
    body = json.loads((out / "adapter_config.json").read_text())
    assert body["r"] == 6 and body["base_model_name_or_path"] == str(tiny_base_dir)
    ref = load_model(tiny_base_dir, device="cpu")
    load_adapter(ref, a, "a")
    load_adapter(ref, b, "b")
    load_adapter(ref, out, "c")
    for name, delta in deltas(ref, "c").items():
        layers = dict(M.method_for("lora").layers(ref))
        exact = sum(w * layers[name].delta_weight(n) for n, w in (("a", 1.0), ("b", -0.5))
                    if layers[name].has_adapter(n))
        assert (delta - exact).abs().max() < 1e-6, name
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), out).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 42]])
    M.set_active_adapters(ref, "c")
    with torch.no_grad():
        assert (peft_model(ids).logits - ref(ids).logits).abs().max() < 1e-5


def test_cli_svd_to_a_rank_and_pissa_files_become_lora(tmp_path, tiny_base_dir, adapters):
    a, _, p = adapters
    out = tmp_path / "svd"
    assert run(["combine", str(a), str(p), "--how", "svd", "--rank", "3", "--out", str(out)]) == 0
    body = json.loads((out / "adapter_config.json").read_text())
    assert body["r"] == 3 and body["peft_type"] == "LORA" and body["init_lora_weights"] is True
    negated = tmp_path / "not_p"
    combine_adapters([p], negated, [-1.0])  # one PiSSA file: its LoRA equivalent, negated exactly
    ref = load_model(tiny_base_dir, device="cpu")
    load_adapter(ref, negated, "n")
    plain = load_model(tiny_base_dir, device="cpu")
    load_adapter(plain, p, "p")
    pissa_to_lora(plain, "p")
    expected = deltas(plain, "p")
    got = deltas(ref, "n")
    assert got.keys() == expected.keys() and got
    for name in got:
        assert (got[name] + expected[name]).abs().max() < 1e-5, name


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, adapters, capsys):
    a, b, _ = adapters
    out = tmp_path / "out"
    for args, message in [
        ([str(a), str(b), "--weights", "1"], "1 weight(s) for 2 adapter(s)"),
        ([str(a), str(b), "--weights", "1,x"], "comma-separated numbers"),
        ([str(a), str(b), "--how", "ties"], "how must be one of"),
        ([str(a), str(b), "--how", "linear"], "one rank"),
        ([str(a), str(b), "--rank", "2"], "rank"),
        ([str(a), str(tmp_path / "missing")], "no adapter_config.json"),
    ]:
        assert run(["combine", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err, message
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left behind
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run(["combine", str(a), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").exists()
    other = tmp_path / "other_base"
    body = json.loads((b / "adapter_config.json").read_text())
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps({**body, "base_model_name_or_path": "somewhere/else"}))
    with pytest.raises(TuneforgeError, match="different base models"):
        combine_adapters([a, other], tmp_path / "x")

"""WiSE-FT: alpha = 0 is exactly the base model, alpha = 1 exactly the fine-tune, and for LoRA alpha scales the
adapter's delta; the sweep writes its table, plot and model. Forgetting: probes before vs after, with direction."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from tuneforge.cli.main import main
from tuneforge.errors import ConfigError
from tuneforge.eval.forgetting import compare, forgetting
from tuneforge.eval.harness import evaluate
from tuneforge.eval.interpolate import WeightInterpolation, interpolate, parse_alphas
from tuneforge.io import load_adapter
from tuneforge.methods import add_adapter
from tuneforge.models import load_model

IDS = torch.tensor([[5, 17, 99, 3, 250, 42, 7]])


@torch.no_grad()
def logits(model):
    return model(IDS).logits


def test_alpha_zero_is_the_base_and_alpha_one_the_fine_tune(tiny_base_dir, lora_adapter):
    base_logits = logits(load_model(str(tiny_base_dir), device="cpu"))
    tuned = load_model(str(tiny_base_dir), device="cpu")
    load_adapter(tuned, lora_adapter)
    tuned_logits = logits(tuned)
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-3)

    model = load_model(str(tiny_base_dir), device="cpu")
    weights = WeightInterpolation.from_adapter(model, lora_adapter)
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged into plain weights
    weights.set(0.0)
    assert torch.equal(logits(model), base_logits)
    weights.set(1.0)
    torch.testing.assert_close(logits(model), tuned_logits, atol=1e-5, rtol=1e-5)
    weights.set(0.0)  # and back: nothing drifts
    assert torch.equal(logits(model), base_logits)


def test_alpha_scales_the_lora_delta(tiny_base_dir, lora_adapter):
    """theta(0.5) equals the same adapter with its scaling (lora_alpha / r) halved: merge-equivalent."""
    model = load_model(str(tiny_base_dir), device="cpu")
    weights = WeightInterpolation.from_adapter(model, lora_adapter)
    weights.set(0.5)
    half = load_model(str(tiny_base_dir), device="cpu")
    load_adapter(half, lora_adapter)
    for module in half.modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict):
            module.scaling = {k: v * 0.5 for k, v in module.scaling.items()}
    torch.testing.assert_close(logits(model), logits(half), atol=1e-5, rtol=1e-5)


def test_full_fine_tune_interpolates_every_changed_tensor(tiny_base_dir):
    model = load_model(str(tiny_base_dir), device="cpu")
    tuned = load_model(str(tiny_base_dir), device="cpu")
    with torch.no_grad():
        tuned.model.layers[0].mlp.down_proj.weight.add_(0.1)
        tuned.model.norm.weight.mul_(1.5)
    weights = WeightInterpolation.from_models(model, tuned)
    assert set(weights.pairs) == {"model.layers.0.mlp.down_proj.weight", "model.norm.weight"}
    weights.set(0.25)
    expected = 0.75 * load_model(str(tiny_base_dir), device="cpu").model.norm.weight + 0.25 * tuned.model.norm.weight
    torch.testing.assert_close(model.model.norm.weight, expected)
    weights.set(1.0)
    assert torch.equal(logits(model), logits(tuned))
    with pytest.raises(ConfigError, match="nothing to interpolate"):
        WeightInterpolation.from_models(model, model)


def test_a_full_method_adapter_interpolates_too(tiny_base_dir, tmp_path):
    from tuneforge.io import save_adapter

    tuned = load_model(str(tiny_base_dir), device="cpu")
    add_adapter(tuned, "full")
    with torch.no_grad():
        for _, p in tuned.named_parameters():
            p.add_(0.01)
    save_adapter(tuned, tmp_path / "full", base_model_name=str(tiny_base_dir))
    tuned_logits = logits(tuned)
    model = load_model(str(tiny_base_dir), device="cpu")
    weights = WeightInterpolation.from_adapter(model, tmp_path / "full")
    weights.set(0.0)
    assert torch.equal(logits(model), logits(load_model(str(tiny_base_dir), device="cpu")))
    weights.set(1.0)
    torch.testing.assert_close(logits(model), tuned_logits)


def test_parse_alphas():
    assert parse_alphas("0,0.25, 1") == [0.0, 0.25, 1.0]
    with pytest.raises(ConfigError, match="numbers"):
        parse_alphas("0,half")


def test_interpolate_sweep_writes_table_plot_and_model(eval_config, lora_adapter, tmp_path):
    eval_config["eval"]["tasks"][0]["metrics"] = ["rougeL"]
    result = interpolate(eval_config, adapter=lora_adapter, alphas="0,0.5,1", save_alpha=0.5,
                         save_dir=tmp_path / "wise", log=lambda *_: None)
    out = Path(eval_config["output_dir"]) / "eval"
    assert [(r["alpha"], r["task"]) for r in result["rows"]] == [
        (a, t) for a in (0.0, 0.5, 1.0) for t in ("sum", "instructions", "general text")]
    assert (out / "interpolate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alpha=0.5" in (out / "interpolate.md").read_text()
    assert len(json.loads((out / "interpolate.json").read_text())["rows"]) == 9
    saved = load_model(str(tmp_path / "wise"), device="cpu")
    reference = load_model(eval_config["model"]["name"], device="cpu")
    WeightInterpolation.from_adapter(reference, lora_adapter).set(0.5)
    torch.testing.assert_close(logits(saved), logits(reference))
    base_ppl = next(r for r in result["rows"] if r["alpha"] == 0 and r["task"] == "general text")["metrics"]
    plain = evaluate(dict(eval_config, eval=dict(eval_config["eval"], tasks=eval_config["eval"]["probes"][1:],
                                                 systems=[{"name": "base"}])), out_dir=tmp_path / "plain",
                     log=lambda *_: None)
    assert plain["rows"][0]["metrics"] == base_ppl  # alpha = 0 scores exactly as the base model
    with pytest.raises(ConfigError, match="--force"):
        interpolate(eval_config, adapter=lora_adapter, alphas="1", save_alpha=1, save_dir=tmp_path / "wise")


def test_compare_knows_which_direction_is_worse():
    rows = [{"task": "p", "system": "base", "metrics": {"rougeL": 30.0, "loss": 2.0}},
            {"task": "p", "system": "tuned", "metrics": {"rougeL": 25.0, "loss": 1.5}}]
    changes = {c["metric"]: c for c in compare(rows)}
    assert changes["rougeL"]["change"] == -5.0 and changes["rougeL"]["worse"]
    assert changes["loss"]["change"] == -0.5 and not changes["loss"]["worse"]


def test_forgetting_reports_probes_before_and_after(eval_config, lora_adapter, tmp_path, capsys):
    result = forgetting(eval_config, adapter=lora_adapter, log=lambda *_: None)
    systems = {r["system"] for r in result["rows"]}
    assert systems == {"base", Path(lora_adapter).parent.name}
    assert {(c["probe"], c["metric"]) for c in result["changes"]} == {
        ("instructions", "rougeL"), ("instructions", "loss"), ("instructions", "perplexity"),
        ("general text", "loss"), ("general text", "perplexity")}
    assert "| general text |" in Path(result["path"]).read_text()
    no_probes = dict(eval_config, eval=dict(eval_config["eval"], probes=[]))
    with pytest.raises(ConfigError, match="eval.probes"):
        forgetting(no_probes, adapter=lora_adapter)
    path = tmp_path / "cfg.yaml"
    eval_config["eval"]["systems"] = [{"name": "LoRA", "adapter": lora_adapter}]
    path.write_text(yaml.safe_dump(eval_config))
    with pytest.raises(SystemExit) as info:
        main(["eval", str(path), "--forgetting", "--out", str(tmp_path / "both")])
    assert info.value.code in (0, None)
    assert (tmp_path / "both" / "forgetting.md").is_file() and "(lower is better)" in capsys.readouterr().out


def test_cli_interpolate_and_forgetting(eval_config, lora_adapter, tmp_path, capsys):
    eval_config["eval"]["tasks"] = []
    eval_config["eval"]["probes"] = eval_config["eval"]["probes"][1:]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(eval_config))
    with pytest.raises(SystemExit) as info:
        main(["interpolate", str(path), "--adapter", lora_adapter, "--alphas", "0,1", "--out", str(tmp_path / "i")])
    assert info.value.code in (0, None) and (tmp_path / "i" / "interpolate.png").is_file()
    with pytest.raises(SystemExit) as info:
        main(["forgetting", str(path), "--adapter", lora_adapter, "--out", str(tmp_path / "f")])
    assert info.value.code in (0, None) and "general text" in capsys.readouterr().out

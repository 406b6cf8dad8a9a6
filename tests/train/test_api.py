"""train(config) end to end on the tiny model (loader patched: nothing is downloaded), the CLI verb, and the
rule that the training package never names a specific method."""
import ast
import json
from pathlib import Path

import pytest
import torch
import yaml

import tuneforge.models as models
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import TrainResult
from tuneforge.train import api

RECORDS = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok", "why")]


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "task": "sft",
        "data": {"train": str(data), "validation": str(data), "max_length": 64, "packing": True},
        "train": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 1e-3},
        "output_dir": str(tmp_path / "run"),
    }


def test_train_end_to_end(config, tmp_path, capsys):
    result = api.train(config, overrides=["train.eval_every=2"], progress=False)
    out = tmp_path / "run"
    assert isinstance(result, TrainResult) and result.steps == 3
    assert set(result.eval_metrics) == {"eval_loss", "perplexity"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["eval_every"] == 2 and resolved["method"]["name"] == "lora"
    saved = (out / "checkpoints" / "step-3" / "trainable.safetensors")
    from safetensors.torch import load_file

    assert all("lora" in k for k in load_file(str(saved)))  # only the adapter's parameters are checkpointed
    printed = capsys.readouterr().out
    assert str(out / "adapter") in printed and str(out / "metrics.jsonl") in printed


def test_dry_run(config, capsys):
    info = api.train(config, dry_run=True)
    assert len(info["targets"]) == 4  # q_proj and v_proj of two layers
    base = tiny_llama(seed=1)
    lora = sum(2 * (m.in_features + m.out_features) for name, m in base.named_modules()
               if name.endswith(("q_proj", "v_proj")))  # r = 2: A is r x in, B is out x r
    assert info["trainable"] == lora and info["total"] == sum(p.numel() for p in base.parameters()) + lora
    assert "trainable parameters" in capsys.readouterr().out
    assert not Path(config["output_dir"]).exists()


def test_cli_verb(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from tuneforge.cli import train as cli_train

    calls = []
    monkeypatch.setattr(api, "train", lambda *a, **k: calls.append((a, k)))
    app = typer.Typer()
    cli_train.register(app)

    @app.callback()
    def _root():
        """Keep `train` a named subcommand, as in the real app."""

    result = CliRunner().invoke(app, ["train", "run.yaml", "--set", "train.max_steps=2", "--set", "seed=1",
                                      "--dry-run", "--no-resume"])
    assert result.exit_code == 0, result.output
    assert calls == [(("run.yaml",), {"overrides": ["train.max_steps=2", "seed=1"], "progress": True,
                                       "resume": False, "dry_run": True})]


def _method_mentions(source: str, methods: set[str]) -> set[str]:
    """How code singles out a method: a string literal that is a method's name (`cfg.method == "x"`) or an
    import from a method's module. Docstrings, comments and ordinary identifiers (torch.full) do not count."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found |= {node.value.lower()} & methods
        elif isinstance(node, ast.ImportFrom) and node.module and "methods." in node.module:
            found |= {node.module.rsplit(".", 1)[-1]} & methods
    return found


def test_training_code_names_no_method():
    """Architecture rule: the loop, tasks and verb stay generic (methods reach them through hooks only)."""
    from tuneforge.registry import METHODS

    root = Path(api.__file__).parent
    for path in [*root.rglob("*.py"), root.parent / "cli" / "train.py"]:
        named = _method_mentions(path.read_text(), set(METHODS.names()))
        assert not named, f"{path} names methods {sorted(named)}"


def test_train_resumes_exactly_with_an_adapter(config, tmp_path):
    """Through the API with LoRA dropout: 2 steps, then resume to 4, equals 4 straight steps."""
    config["method"]["lora_dropout"] = 0.1
    config["train"].update(lr_schedule="constant", max_steps=4)
    straight = api.train(config, progress=False)
    config["output_dir"] = str(tmp_path / "resumed")
    api.train(config, overrides=["train.max_steps=2"], progress=False)
    resumed = api.train(config, progress=False)
    losses = lambda r: [x["loss"] for x in r.history if "loss" in x]  # noqa: E731
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 4


def test_memory_switches_keep_the_losses(config, tmp_path):
    """recompute_norms and checkpointing only the first block change what is kept, not the training run."""
    import copy

    losses = {}
    for name, extra in (("plain", {"recompute_norms": False}),
                        ("lean", {"gradient_checkpointing": True, "gradient_checkpointing_layers": 1})):
        cfg = copy.deepcopy(config)
        cfg["train"].update(extra)
        cfg["output_dir"] = str(tmp_path / name)
        api.train(cfg, progress=False)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["plain"]) == 3
    assert losses["lean"] == pytest.approx(losses["plain"], rel=1e-5, abs=1e-6)


def test_bf16_base_matmuls_train_and_leave_the_fp32_weights(config, tmp_path, monkeypatch, capsys):
    """train.base_matmul_dtype: bfloat16 runs the adapted layers' base GEMMs on bf16 copies during the run and
    drops them before the adapter is saved (merging and export read the untouched fp32 weights)."""
    from tuneforge.models.fused_linear import matmul_weight

    made = []
    monkeypatch.setattr(api, "_load_model", lambda cfg: made.append(tiny_llama(seed=1)) or made[-1])
    config["method"]["target_modules"] = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    before = {k: v.clone() for k, v in tiny_llama(seed=1).state_dict().items()}
    result = api.train(config, overrides=["train.base_matmul_dtype=bfloat16"], progress=False)
    assert result.steps == 3 and all(r["loss"] == r["loss"] for r in result.history if "loss" in r)
    assert "base matmuls in bfloat16: 10 frozen weights" in capsys.readouterr().out  # 2 blocks x 5 targets
    model = made[0]
    bases = [m.base_layer for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "fused_factors")]
    assert len(bases) == 10 and all(matmul_weight(b) is b.weight for b in bases)
    for name, value in model.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, before[name.replace(".base_layer", "")]), name

"""`tuneforge data preview CONFIG`: loads the run config and its tokenizer and prints the preview."""
import json
from types import SimpleNamespace

import typer
from typer.testing import CliRunner

import tuneforge.config
import tuneforge.models
from tuneforge.cli import data as data_cli
from tuneforge.data import DataConfig
from tuneforge.models.tiny import tiny_tokenizer


def fake_stack(monkeypatch, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(5)))
    calls = {}

    def load_config(path, overrides=()):
        calls["config"] = (path, list(overrides))
        return SimpleNamespace(model=SimpleNamespace(name="tiny"), data=DataConfig(train=str(train)))

    def load_tokenizer(name):
        calls["tokenizer"] = name
        return tiny_tokenizer()

    monkeypatch.setattr(tuneforge.config, "load_config", load_config, raising=False)
    monkeypatch.setattr(tuneforge.models, "load_tokenizer", load_tokenizer, raising=False)
    return calls


def test_preview_config_api(monkeypatch, tmp_path):
    calls = fake_stack(monkeypatch, tmp_path)
    text = data_cli.preview_config("run.yaml", n=1, overrides=["data.max_length=64"])
    assert calls == {"config": ("run.yaml", ["data.max_length=64"]), "tokenizer": "tiny"}
    assert "⟦a0<|im_end|>⟧" in text and "example 2" not in text and "records: 5" in text


def test_data_preview_command(monkeypatch, tmp_path):
    calls = fake_stack(monkeypatch, tmp_path)
    app = typer.Typer()

    @app.command()
    def version() -> None:  # a second verb, as in the real app
        pass

    data_cli.register(app)
    result = CliRunner().invoke(app, ["data", "preview", "run.yaml", "--n", "2", "--set", "a.b=1", "--set", "c=2"])
    assert result.exit_code == 0, result.output
    assert calls["config"] == ("run.yaml", ["a.b=1", "c=2"])
    assert "example 2" in result.output and "example 3" not in result.output and "p95" in result.output

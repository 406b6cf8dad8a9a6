"""`tuneforge compare` on the tiny BERT: every method of the shipped SST-2 comparison runs through the same
machinery; the table, CSV and plot are written; results are reused; config errors name file and line."""
import csv
from pathlib import Path

import pytest
import yaml

from tuneforge.cli.main import main
from tuneforge.errors import ConfigError
from tuneforge.eval.compare import compare
from tuneforge.eval.compare_config import load_compare_config

from .conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "compare" / "sst2_minilm.yaml"


def tiny_compare(tiny_bert_dir, tmp_path, methods=None) -> Path:
    """The shipped comparison's methods, on the tiny model and the fixture slice, one short epoch."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    cfg = {
        **shipped,
        "model": {"name": str(tiny_bert_dir), "kind": "sequence-classification", "num_labels": 2},
        "data": {"train": str(FIXTURES / "sst2_train.jsonl"), "validation": str(FIXTURES / "sst2_validation.jsonl"),
                 "max_length": 32},
        "train": {**shipped["train"], "micro_batch_size": 16},
        "output_dir": str(tmp_path / "cmp"),
        "methods": methods or shipped["methods"],
    }
    for m in cfg["methods"]:
        if isinstance(m, dict) and m["name"] == "vera":
            m["r"] = 16  # the tiny model's layers are narrower than the shipped rank
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_shipped_config_lists_the_twelve_methods():
    cc = load_compare_config(SHIPPED)
    assert [e.label for e in cc.entries] == [
        "head_only", "last_k", "full", "lora", "dora", "vera", "ia3", "bitfit", "bottleneck", "prompt_tuning",
        "loreft", "feature_based"]
    assert {e.run_config.train.epochs for e in cc.entries} == {1}
    assert Path(ROOT / cc.entries[0].run_config.data.train).exists()


def test_every_shipped_method_runs_on_a_tiny_model(tiny_bert_dir, tmp_path):
    out = compare(tiny_compare(tiny_bert_dir, tmp_path), echo=lambda *_: None)
    rows = {r["label"]: r for r in out["rows"]}
    assert len(rows) == 12
    assert rows["full"]["trainable"] == rows["full"]["total"]
    assert rows["head_only"]["trainable"] == 2 * 64 + 2  # a linear head over 64 features
    assert rows["feature_based"]["trainable"] == 64 + 1  # binary logistic regression
    assert rows["lora"]["trainable"] < rows["last_k"]["trainable"] < rows["full"]["trainable"]
    for row in rows.values():
        matrix = row["metrics"]["confusion_matrix"]  # the metric is the accuracy of the method's predictions
        assert row["metric"] == sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix))
        assert row["wall_time_s"] > 0 and row["adapter_bytes"] > 0
    table = list(csv.DictReader(out["csv"].open()))
    assert [r["label"] for r in table] == list(rows)
    text = out["markdown"].read_text()
    assert "all 48 records" in text and "1 epoch(s)" in text and "| lora |" in text
    assert out["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_are_reused_and_only_runs_a_subset(tiny_bert_dir, tmp_path):
    config = tiny_compare(tiny_bert_dir, tmp_path, methods=["head_only", {"name": "lora", "r": 2}])
    first = compare(config, only=["head_only"], echo=lambda *_: None)
    assert [r["label"] for r in first["rows"]] == ["head_only"]
    both = compare(config, echo=lambda *_: None)
    assert both["rows"][0] == first["rows"][0]  # cached, not retrained
    again = compare(config, echo=lambda *_: None)
    assert again["rows"] == both["rows"]  # lora too, although training filled in its modules_to_save
    changed = compare(config, overrides=["train.learning_rate=0.05"], only=["head_only"], echo=lambda *_: None)
    assert changed["rows"][0]["fingerprint"] != first["rows"][0]["fingerprint"]


def test_parallel_jobs_give_the_rows_of_a_sequential_run(tiny_bert_dir, tmp_path):
    methods = ["head_only", {"name": "lora", "r": 2}, "feature_based"]
    (tmp_path / "seq").mkdir()
    (tmp_path / "par").mkdir()
    sequential = compare(tiny_compare(tiny_bert_dir, tmp_path / "seq", methods=methods), echo=lambda *_: None)
    lines = []
    parallel = compare(tiny_compare(tiny_bert_dir, tmp_path / "par", methods=methods), jobs=2, echo=lines.append)
    assert [r["label"] for r in parallel["rows"]] == ["head_only", "lora", "feature_based"]
    for ours, theirs in zip(parallel["rows"], sequential["rows"]):
        assert ours["trainable"] == theirs["trainable"] and ours["total"] == theirs["total"]
        assert ours["metric"] == pytest.approx(theirs["metric"], abs=1e-6)
    assert any("(2 at a time)" in line for line in lines)
    text = parallel["markdown"].read_text()
    assert "2 methods at a time" in text and "whole comparison:" in text
    assert [r["label"] for r in csv.DictReader(parallel["csv"].open())] == ["head_only", "lora", "feature_based"]


def test_budget_keys_cannot_change_per_method(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: x, kind: sequence-classification}\nmethods:\n  - full\n"
                    "  - name: lora\n    train:\n      epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml:6.*'epochs' is part of the shared budget"):
        load_compare_config(path)


def test_bad_method_setting_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("methods:\n  - full\n  - name: lora\n    rank: 8\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4.*rank"):
        load_compare_config(path)
    path.write_text("methods:\n  - full\n  - {name: nosuch}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3.*unknown method 'nosuch'"):
        load_compare_config(path)


def test_cli_reports_unknown_only_label(tiny_bert_dir, tmp_path, capsys):
    config = tiny_compare(tiny_bert_dir, tmp_path, methods=["head_only"])
    with pytest.raises(SystemExit) as done:
        main(["compare", str(config), "--only", "lora"])
    assert done.value.code == 2 and "no method labelled lora" in capsys.readouterr().err

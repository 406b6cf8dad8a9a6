"""One real run of the harness on the packaged SmolLM2 with MiniLM retrieval: the shipped SciTLDR task renders,
generates and scores (2 examples, 8 new tokens)."""
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.eval.harness import evaluate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scitldr_zero_and_retrieved_one_shot(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "configs" / "eval_scitldr.yaml", [
        "eval.num_samples=2", "eval.max_new_tokens=8", f"output_dir={tmp_path}",
    ])
    cfg.eval.tasks[0].demonstrations_limit = 8
    cfg.eval.systems = [s for s in cfg.eval.systems if s.adapter is None and (s.shots == 0 or s.selection == "retrieved")]
    cfg.eval.systems[1].shots = 1
    result = evaluate(cfg, log=lambda *_: None)
    rows = {r["system"]: r for r in result["rows"]}
    assert set(rows) == {"zero-shot", "few-shot retrieved (k=2)"}
    for row in rows.values():
        assert row["n"] == 2 and 0 <= row["metrics"]["rougeL"] <= 100
    predictions = (tmp_path / "eval" / "predictions").glob("*.jsonl")
    assert all(p.read_text().count("\n") == 2 for p in predictions)

"""Embedding fine-tuning counts the pairs a length limit cuts, like SFT and classification do."""
import json

from tuneforge.train.api import train

from .conftest import embed_config


def test_pairs_cut_at_max_length_are_counted(tiny_bert_dir, tmp_path):
    rows = [{"sentence1": ("word " * 30 if i % 4 == 0 else "short") + f" {i}", "sentence2": f"other {i}",
             "score": float(i % 5)} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = embed_config(tiny_bert_dir, tmp_path / "run", loss="cosent")
    cfg["data"].update(train=str(data), validation=str(data), max_length=32)
    cfg["train"] = {"max_steps": 1, "micro_batch_size": 4}
    result = train(cfg, progress=False)
    cut = {"records": 8, "examples": 8, "dropped": 0, "truncated": 2, "dropped_share": 0.0, "truncated_share": 0.25}
    assert result.data_report == {"train": cut, "validation": cut}  # rows 0 and 4 exceed 32 byte tokens
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["train"]["truncated"] == 2

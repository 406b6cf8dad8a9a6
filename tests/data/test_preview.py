import json

import pytest

from tuneforge.data import DataConfig, preview
from tuneforge.data.preview import mark_trained
from tuneforge.models.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"instruction": f"Question number {i}?", "input": "", "output": "Answer " * (i + 1)} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_preview_marks_trained_tokens_and_reports_stats(tok, data_file):
    text = preview(data_file, tok, DataConfig(train=str(data_file), max_length=64), n=2)
    assert "--- example 1 (line 1)" in text and "--- example 2 (line 2)" in text and "example 3" not in text
    assert "⟦Answer <|im_end|>⟧" in text
    assert "Question number 0?<|im_end|>" in text and "⟦Question" not in text
    for word in ("records: 12", "min", "mean", "median", "p95", "max", "truncated at max_length=64",
                 "trained tokens", "packing:", "efficiency"):
        assert word in text


def test_preview_shows_truncation_and_no_packing_line_when_off(tok, data_file):
    text = preview(str(data_file), tok, DataConfig(max_length=48, packing=False, limit_train=12), n=12)
    assert "[... truncated]" in text and "cut from" in text
    assert "packing:" not in text


def test_preview_in_memory_records(tok):
    recs = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    text = preview(recs, tok, DataConfig(system_prompt="Sys"), n=3)
    assert "(in memory)" in text and "format: chat" in text and "system\nSys" in text


def test_mark_trained_brackets_runs(tok):
    ids = tok.encode("abcd", add_special_tokens=False)
    assert mark_trained(tok, ids, [-100, ids[1], ids[2], -100]) == "a⟦bc⟧d"

"""Examples dropped (reply cut away by max_length) or truncated are counted and reported: TrainResult, summary.json
and the printed summary carry the counts and shares, a warning shows above data.warn_dropped_share, and a split
with every record dropped is an error before any training."""
import json

import pytest

from tuneforge.errors import ConfigError
from tuneforge.train import api

from .runs import LONG, RECORDS, patch_loaders, run_config


@pytest.fixture(autouse=True)
def loaders(monkeypatch):
    patch_loaders(monkeypatch)


def test_dropped_examples_are_counted_reported_and_warned(tmp_path, capsys):
    records = RECORDS[:4] + [LONG] * 6  # 6 of 10 replies cut away entirely at max_length 64
    result = api.train(run_config(tmp_path, records, max_steps=2), progress=False)
    expected = {"records": 10, "examples": 4, "dropped": 6, "truncated": 6, "dropped_share": 0.6,
                "truncated_share": 0.6}
    assert result.data_report == {"train": expected}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == {"train": expected} and summary["steps"] == 2
    printed = capsys.readouterr().out
    assert "train data: 4 examples from 10 records; dropped 6 (60.0%), truncated 6 (60.0%)" in printed
    assert "warning: 6 of 10 train records (60.0%) were dropped" in printed
    assert "data.warn_dropped_share=0.05" in printed


def test_threshold_is_a_config_key(tmp_path, capsys):
    records = RECORDS * 2 + [LONG]  # 1 of 17 dropped: 5.9%
    config = run_config(tmp_path, records, max_steps=1)
    config["data"]["warn_dropped_share"] = 0.1
    result = api.train(config, progress=False)
    assert result.data_report["train"]["dropped"] == 1
    assert result.data_report["train"]["dropped_share"] == 1 / 17
    assert "warning" not in capsys.readouterr().out
    api.train(config, overrides=["data.warn_dropped_share=0.05", "train.max_steps=2"], progress=False)
    assert "warning: 1 of 17 train records (5.9%) were dropped" in capsys.readouterr().out


def test_every_record_dropped_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"all 3 training records were dropped") as err:
        api.train(run_config(tmp_path, [LONG] * 3), progress=False)
    assert err.value.key == "data.max_length"
    assert not (tmp_path / "run" / "adapter").exists()


def test_threshold_must_be_a_share(tmp_path):
    config = run_config(tmp_path)
    config["data"]["warn_dropped_share"] = 1.5
    with pytest.raises(ConfigError, match="warn_dropped_share must be in"):
        api.resolve_config(config)


def test_preference_pairs_report_skips_and_cuts():
    from tuneforge.train.tasks.preference import PreferenceTask
    from tuneforge.data.preferences import PairStats

    task = PreferenceTask()
    stats = PairStats(split="train", rows=5, kept=3, truncated_prompts=2, truncated_replies=3, truncated_pairs=2)
    stats.skip("with chosen == rejected", 4)
    stats.skip("with an empty reply", 5)
    task.pair_stats = [stats]
    assert task.data_report() == {"train": {"records": 5, "examples": 3, "dropped": 2, "truncated": 2}}


def test_classification_reports_rows_cut_at_max_length(tmp_path, monkeypatch):
    """Texts longer than data.max_length lose their end in a classifier: counted per split."""
    import json

    from tuneforge.models.tiny import tiny_bert

    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_bert(seed=0, num_labels=2))
    rows = [{"text": ("long " * 20 if i % 3 == 0 else "short") + f" {i}", "label": i % 2} for i in range(9)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"model": {"name": "tiny-bert", "kind": "sequence-classification", "num_labels": 2},
              "method": {"name": "head_only"}, "task": {"name": "classify"},
              "data": {"train": str(data), "validation": str(data), "max_length": 32},
              "train": {"max_steps": 1, "micro_batch_size": 4}, "output_dir": str(tmp_path / "run")}
    result = api.train(config, progress=False)
    cut = {"records": 9, "examples": 9, "dropped": 0, "truncated": 3, "dropped_share": 0.0, "truncated_share": 1 / 3}
    assert result.data_report == {"train": cut, "validation": cut}  # 3 of 9 texts exceed 32 byte tokens

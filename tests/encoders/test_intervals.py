"""Intervals and seeds through the encoder verbs (#24): sts-eval / retrieval-eval / classify-eval report a
bootstrap interval per metric, several runs as their mean, a baseline as a paired difference (a model against
itself: exactly 0); `train --seeds` and `compare --seeds` run a recipe per seed; the classify task pools the way a
sentence-transformers checkpoint was trained (mean) unless told otherwise."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from tuneforge.cli.main import main
from tuneforge.eval.classification import evaluate_classifier
from tuneforge.eval.retrieval import evaluate_retrieval
from tuneforge.eval.sts import evaluate_sts
from tuneforge.train.api import train
from tuneforge.train.seeds import parse_seeds, train_seeds

from .conftest import FIXTURES, classify_config


def test_sts_interval_holds_the_point_and_a_model_against_itself_differs_by_zero(tiny_bert_dir):
    m = evaluate_sts(tiny_bert_dir, FIXTURES / "stsb_validation.jsonl", baseline=tiny_bert_dir, resamples=200)
    low, high = m["intervals"]["spearman"]
    assert low <= m["spearman"] <= high
    assert m["difference"]["spearman"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert m["baseline"]["spearman"] == m["spearman"]


def test_retrieval_runs_are_averaged_per_query(tiny_bert_dir):
    one = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", resamples=100)
    two = evaluate_retrieval([tiny_bert_dir, tiny_bert_dir], FIXTURES / "scifact", resamples=100)
    assert two["ndcg@10"] == pytest.approx(one["ndcg@10"]) and two["std"]["ndcg@10"] == 0.0
    assert len(two["runs"]) == 2


def test_parse_seeds():
    assert parse_seeds("42, 43,44") == [42, 43, 44]
    from tuneforge.errors import ConfigError

    for bad in ("42,x", "", "1,1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


@pytest.fixture(scope="module")
def seed_runs(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "run"
    cfg = classify_config(tiny_bert_dir, out)
    summary = train_seeds(cfg, "1,2", progress=False)
    return out, summary


def test_train_seeds_writes_a_run_per_seed_and_the_mean(seed_runs):
    out, summary = seed_runs
    assert summary["seeds"] == [1, 2]
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["eval_metrics"]["accuracy"]
                for s in (1, 2)]
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean(per_seed))
    assert summary["std"]["accuracy"] == pytest.approx(np.std(per_seed, ddof=1))
    assert yaml.safe_load((out / "seed-2" / "config.yaml").read_text())["train"]["seed"] == 2
    assert "mean ± std" in (out / "seeds.md").read_text()


def test_classify_eval_of_seeds_against_a_baseline(seed_runs, capsys):
    out, summary = seed_runs
    runs = [out / "seed-1", out / "seed-2"]
    m = evaluate_classifier(runs, baseline=runs[0], resamples=200)
    assert m["accuracy"] == pytest.approx(summary["mean"]["accuracy"])
    assert [r["accuracy"] for r in m["runs"]] == pytest.approx([summary["per_seed"][s]["accuracy"] for s in (1, 2)])
    d = m["difference"]["accuracy"]
    assert d["value"] == pytest.approx(m["accuracy"] - m["baseline"]["accuracy"])
    assert d["low"] <= d["value"] <= d["high"]
    with pytest.raises(SystemExit) as done:
        main(["classify-eval", str(runs[0]), "--baseline", str(runs[0]), "--resamples", "50"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "95% CI" in text and "+0.0000  95% CI [+0.0000, +0.0000]" in text


def test_mean_pooling_classifies_the_mean_of_the_token_states(tiny_bert_dir, tmp_path):
    cfg = classify_config(tiny_bert_dir, tmp_path / "run", method={"name": "full"})
    cfg["task"]["pooling"] = "mean"
    cfg["train"]["max_steps"] = 1
    train(cfg, progress=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["task"]["pooling"] == "mean"
    from tuneforge.models import load_model
    from tuneforge.train.tasks.classify import ClassifyTask

    model = load_model(str(tiny_bert_dir), kind="sequence-classification", num_labels=2).eval()
    task = ClassifyTask()
    task.pooling = "mean"
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = model.classifier(mean)
        got = task.logits(model, {"input_ids": ids, "attention_mask": mask})
        own = ClassifyTask().logits(model, {"input_ids": ids, "attention_mask": mask})
    # the same float32 sums in a different order: a few ulps of values of order 1
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(own, expected, atol=1e-3)  # "model" pooling is the [CLS] pooler, not the mean


def test_auto_pooling_follows_a_sentence_transformers_checkpoint(tiny_bert_dir, tmp_path):
    st = tmp_path / "st-model"
    shutil.copytree(tiny_bert_dir, st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    for model_dir, expected in ((st, "mean"), (tiny_bert_dir, "model")):
        cfg = classify_config(model_dir, tmp_path / f"run-{expected}")
        cfg["train"]["max_steps"] = 1
        train(cfg, progress=False)
        saved = yaml.safe_load((tmp_path / f"run-{expected}" / "config.yaml").read_text())
        assert saved["task"]["pooling"] == expected


def test_compare_seeds_reports_mean_std_and_paired_intervals(tiny_bert_dir, tmp_path):
    from tuneforge.eval.compare import compare_seeds

    from .test_compare import tiny_compare

    path = tiny_compare(tiny_bert_dir, tmp_path, methods=[{"name": "head_only"}, {"name": "feature_based"}])
    result = compare_seeds(path, "1,2", echo=lambda *_: None, resamples=100)
    methods = {m["label"]: m for m in result["methods"]}
    for m in methods.values():
        assert m["mean"] == pytest.approx(np.mean(list(m["per_seed"].values())))
        assert m["low"] <= m["mean"] <= m["high"]
    assert sum(m["vs_best"] is None for m in methods.values()) == 1
    text = (tmp_path / "cmp" / "seeds.md").read_text()
    assert "mean ± std" in text and "paired" in text
    table = (tmp_path / "cmp" / "seed-1" / "results.md").read_text()
    assert "95% CI" in table and "best" in table


def test_seed_summary_without_validation_says_so():
    from tuneforge.train.seeds import summarize, summary_markdown

    summary = summarize({1: {}, 2: {}})
    assert summary["mean"] == {} and "no evaluation metrics" in summary_markdown(summary)
    summary = summarize({1: {"accuracy": 0.5, "confusion_matrix": [[1]]}, 2: {"accuracy": 0.7}})
    assert summary["mean"] == {"accuracy": pytest.approx(0.6)} and "0.6000 ± 0.1414" in summary_markdown(summary)

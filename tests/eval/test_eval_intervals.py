"""`tuneforge eval` with intervals (#24): every metric of every row gets a bootstrap 95% interval rebuilt from its
predictions (corpus BLEU/chrF and the token-weighted loss recomputed per resample), and each system after the
first a paired interval of its difference to the first on the same examples."""
import json
from pathlib import Path

import numpy as np
import pytest

from tuneforge.eval import bootstrap
from tuneforge.config.eval import EvalTask
from tuneforge.eval.example_stats import row_statistics
from tuneforge.eval.harness import evaluate


def test_rows_carry_intervals_and_paired_differences(eval_config):
    eval_config["eval"]["systems"] = [{"name": "zero-shot"}, {"name": "zero-shot again"},
                                      {"name": "random k=2", "shots": 2}]
    result = evaluate(eval_config, log=lambda *_: None, resamples=200)
    first, same, other = result["rows"]
    for row in result["rows"]:
        assert set(row["intervals"]) == set(row["metrics"])
        for name, (low, high) in row["intervals"].items():
            assert low <= row["metrics"][name] + 1e-9 and row["metrics"][name] <= high + 1e-9
    assert "vs_first" not in first
    # greedy decoding of the same prompts: the same replies, so every paired difference is exactly 0
    assert same["vs_first"]["system"] == "zero-shot"
    assert all(d == {"value": 0.0, "low": 0.0, "high": 0.0} for k, d in same["vs_first"].items() if k != "system")
    assert set(other["vs_first"]) - {"system"} <= set(other["metrics"])
    table = (Path(eval_config["output_dir"]) / "eval" / "results.md").read_text()
    assert "Difference to zero-shot" in table and "[" in table
    saved = json.loads((Path(eval_config["output_dir"]) / "eval" / "results.json").read_text())
    assert saved["bootstrap"]["resamples"] == 200


def test_row_statistics_reproduce_the_reported_metrics(data_files):
    from tuneforge.eval.metrics import text_metrics

    task = EvalTask(name="t", data=data_files["sum_val"], prompt="{document}", target="{summary}",
                    metrics=["rouge", "bleu", "chrf", "loss"])
    preds = ["cats works well", "the dog", "a b c"]
    refs = [["cats works", "cats ok"], ["the dog runs"], ["a b"]]
    metrics, per_example = text_metrics(["rouge1", "rouge2", "rougeL", "bleu", "chrf"], preds, refs)
    nll, tokens = [3.0, 1.0, 2.0], [2, 1, 4]
    metrics.update(loss=sum(nll) / sum(tokens), perplexity=float(np.exp(sum(nll) / sum(tokens))))
    rows = [{"prediction": p, "references": r, "scores": s, "loss": a / n, "tokens": n}
            for p, r, s, a, n in zip(preds, refs, per_example, nll, tokens)]
    stats = row_statistics(task, metrics, rows)
    assert set(stats) == set(metrics)
    for name, statistic in stats.items():
        assert bootstrap.point(statistic, 3) == pytest.approx(metrics[name], rel=1e-9)

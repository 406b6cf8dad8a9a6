"""Bootstrap statistics of one `tuneforge eval` row, rebuilt from its per-example predictions, so every metric of
the results table gets a 95% interval and every system a paired interval against the first system of the task
(eval/bootstrap.py). Corpus metrics are recomputed per resample: BLEU and chrF from summed n-gram statistics,
loss as summed nll over summed tokens, F1 from confusion counts."""
from __future__ import annotations

import math

import numpy as np

from . import bootstrap


def _exp(statistic: bootstrap.Statistic) -> bootstrap.Statistic:
    return lambda idx: np.exp(np.minimum(statistic(idx), 700.0))


def row_statistics(task, metrics: dict, predictions: list[dict]) -> dict[str, bootstrap.Statistic]:
    """{metric: statistic} for the metrics of one (task, system) row, from its predictions rows
    (harness.run_task's second result). Metrics without per-example data are left out."""
    out: dict[str, bootstrap.Statistic] = {}
    if not predictions:
        return out
    if "nll" in predictions[0] or "tokens" in predictions[0]:
        nll = [r["nll"] if "nll" in r else r["loss"] * r["tokens"] for r in predictions]
        loss = bootstrap.ratio_of(nll, [r["tokens"] for r in predictions])
        out.update(loss=loss, perplexity=_exp(loss))
    if task.type == "choice":
        gold = [task.choices.index(r["gold"]) for r in predictions]
        pred = [task.choices.index(r["prediction"]) for r in predictions]
        out["accuracy"] = bootstrap.mean_of([100.0 * (g == p) for g, p in zip(gold, pred)])
        f1 = bootstrap.macro_f1_of(gold, pred, len(task.choices))
        out["f1"] = lambda idx: 100.0 * f1(idx)
    elif task.type == "generate":
        from sacrebleu.metrics import BLEU, CHRF

        replies = [r["prediction"] for r in predictions]
        references = [r["references"] for r in predictions]
        for name in metrics:
            if name == "bleu":
                out[name] = bootstrap.sacrebleu_of(BLEU(), replies, references)
            elif name == "chrf":
                out[name] = bootstrap.sacrebleu_of(CHRF(), replies, references)
            elif name not in out and all(name in r.get("scores", {}) for r in predictions):
                out[name] = bootstrap.mean_of([r["scores"][name] for r in predictions])
    return {k: v for k, v in out.items() if k in metrics}


def row_intervals(statistics: dict, n: int, resamples: int, seed: int) -> dict[str, list[float]]:
    return {m: list(bootstrap.interval(s, n, resamples, seed)) for m, s in statistics.items()}


def row_difference(statistics: dict, first: dict, n: int, resamples: int, seed: int) -> dict[str, dict]:
    """{metric: {"value", "low", "high"}} of this row minus the first system's row, paired over examples."""
    out = {}
    for m in statistics:
        if m in first:
            d = bootstrap.paired_summary(statistics[m], first[m], n, resamples, seed)
            if not any(math.isnan(v) for v in d.values()):
                out[m] = d
    return out

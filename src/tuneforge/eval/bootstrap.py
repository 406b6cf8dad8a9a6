"""Bootstrap 95% intervals for evaluation metrics, and paired intervals for the difference of two systems.

Percentile bootstrap over examples (Efron & Tibshirani 1993): draw `resamples` sets of n examples with
replacement (fixed seed, so a report is reproducible), recompute the metric on each, and take the 2.5th and 97.5th
percentiles. The metric is recomputed as it is defined, not averaged per example: corpus BLEU and chrF from the
resample's summed n-gram statistics, Spearman from the resampled pairs, macro-F1 from the resample's confusion
counts. A paired interval draws the same example indices for both systems and takes percentiles of the
difference (Koehn 2004, https://aclanthology.org/W04-3250), so example difficulty cancels out; two identical
systems give exactly [0, 0].

A statistic here is a function from an (R, n) array of example indices to R metric values, so the same draw of
indices serves every metric and both sides of a comparison. Several runs of one recipe (seeds) make one system
whose statistic is the mean over the runs (`mean_over`), so a paired interval compares seed-means.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95

Statistic = Callable[[np.ndarray], np.ndarray]


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) example indices drawn with replacement; the same (n, resamples, seed) gives the same draw."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one example")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(low, high) percentiles holding `level` of the resampled values (NaN resamples, e.g. a constant column
    for a correlation, are left out)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def interval(statistic: Statistic, n: int, resamples: int = RESAMPLES, seed: int = SEED,
             level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of one statistic over n examples."""
    return percentile_interval(statistic(bootstrap_indices(n, resamples, seed)), level)


def paired_interval(statistic_a: Statistic, statistic_b: Statistic, n: int, resamples: int = RESAMPLES,
                    seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of statistic_a - statistic_b, both computed on the same resampled examples."""
    idx = bootstrap_indices(n, resamples, seed)
    return percentile_interval(statistic_a(idx) - statistic_b(idx), level)


def point(statistic: Statistic, n: int) -> float:
    """The statistic on the examples as they are (the identity resample)."""
    return float(statistic(np.arange(n)[None, :])[0])


# --- statistics -------------------------------------------------------------------------------------------


def mean_of(values: Sequence[float]) -> Statistic:
    """Mean of per-example values (accuracy from 0/1 hits, ROUGE, exact match, per-query nDCG)."""
    values = np.asarray(values, dtype=np.float64)
    return lambda idx: values[idx].mean(axis=1)


def ratio_of(numerators: Sequence[float], denominators: Sequence[float]) -> Statistic:
    """sum(numerators) / sum(denominators) over the resample (token-weighted mean loss)."""
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    return lambda idx: num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-300)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def pearson_of(x: Sequence[float], y: Sequence[float]) -> Statistic:
    """Pearson correlation of the resampled pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return lambda idx: _rowwise_pearson(x[idx], y[idx])


def spearman_of(x: Sequence[float], y: Sequence[float]) -> Statistic:
    """Spearman correlation of the resampled pairs: Pearson of their ranks (ties get the average rank, as in
    scipy.stats.spearmanr; a pair drawn twice is a tie with itself)."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return lambda idx: _rowwise_pearson(rankdata(x[idx], axis=1), rankdata(y[idx], axis=1))


def _confusion_counts(gold: np.ndarray, pred: np.ndarray, num_labels: int, idx: np.ndarray) -> np.ndarray:
    """(R, K, K) confusion counts of each resample, rows = true class."""
    cells = gold[idx] * num_labels + pred[idx]
    offsets = (np.arange(idx.shape[0]) * num_labels * num_labels)[:, None]
    flat = np.bincount((cells + offsets).ravel(), minlength=idx.shape[0] * num_labels * num_labels)
    return flat.reshape(idx.shape[0], num_labels, num_labels)


def macro_f1_of(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> Statistic:
    """Macro-F1 of each resample (per-class F1 = 2 TP / (2 TP + FP + FN), 0 when the class is absent from both
    gold and predictions, as scikit-learn's zero_division=0)."""
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)

    def statistic(idx: np.ndarray) -> np.ndarray:
        counts = _confusion_counts(gold, pred, num_labels, idx)
        tp = np.diagonal(counts, axis1=1, axis2=2)
        den = counts.sum(axis=2) + counts.sum(axis=1)  # (TP + FN) + (TP + FP)
        f1 = np.where(den > 0, 2.0 * tp / np.where(den > 0, den, 1), 0.0)
        return f1.mean(axis=1)

    return statistic


def corpus_of(stats: np.ndarray, score: Callable[[np.ndarray], float]) -> Statistic:
    """A corpus metric from summed per-example sufficient statistics (n, k): score(sum over the resample)."""
    stats = np.asarray(stats, dtype=np.float64)

    def statistic(idx: np.ndarray) -> np.ndarray:
        counts = np.stack([np.bincount(row, minlength=stats.shape[0]) for row in idx])
        return np.array([score(total) for total in counts @ stats])

    return statistic


def sacrebleu_of(metric, predictions: list[str], references: list[list[str]]) -> Statistic:
    """Corpus BLEU or chrF (a sacrebleu metric object) recomputed from the resample's summed n-gram statistics,
    which equals sacrebleu's corpus_score on the resampled sentences."""
    from .metrics import _reference_streams

    stats = np.array(metric._extract_corpus_statistics(predictions, _reference_streams(references)))
    return corpus_of(stats, lambda total: float(metric._compute_score_from_stats(total.astype(int).tolist()).score))


def mean_over(statistics: Sequence[Statistic]) -> Statistic:
    """One system made of several runs (seeds) scored on the same examples: the mean of their statistics."""
    return lambda idx: np.mean([s(idx) for s in statistics], axis=0)


# --- reports ----------------------------------------------------------------------------------------------


def summary(statistic: Statistic, n: int, resamples: int = RESAMPLES, seed: int = SEED,
            level: float = LEVEL) -> dict:
    """{"value", "low", "high"} of one statistic."""
    low, high = interval(statistic, n, resamples, seed, level)
    return {"value": point(statistic, n), "low": low, "high": high}


def paired_summary(statistic_a: Statistic, statistic_b: Statistic, n: int, resamples: int = RESAMPLES,
                   seed: int = SEED, level: float = LEVEL) -> dict:
    """{"value", "low", "high"} of statistic_a - statistic_b, paired over the same examples."""
    low, high = paired_interval(statistic_a, statistic_b, n, resamples, seed, level)
    return {"value": point(statistic_a, n) - point(statistic_b, n), "low": low, "high": high}


def settings(resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """What a report records about its intervals."""
    return {"method": "percentile bootstrap over examples", "resamples": resamples, "seed": seed, "level": level}


def format_interval(low: float, high: float, digits: int = 4, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) over runs."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def as_list(value) -> list:
    """A model / run argument that may be one path or a list of them, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) else list(value)


def report_runs(runs: Sequence[dict[str, Statistic]], n: int, baseline: Sequence[dict[str, Statistic]] = (),
                resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """Intervals for one system scored on n examples, given as one or more runs (seeds) of metric statistics,
    optionally against a baseline system (one or more runs) on the same examples.

    Returns {metric: value, "intervals": {metric: [low, high]}, "bootstrap": settings}; with several runs the
    value is the mean over runs (its interval is the bootstrap interval of that mean) and "runs" lists each
    run's values, "std" the standard deviation over runs; with a baseline, "baseline" holds its values and
    intervals, and "difference" {metric: {"value", "low", "high"}} the paired interval of system - baseline."""
    if not runs:
        raise ValueError("no runs to report")
    names = [m for m in runs[0] if all(m in run for run in runs)]

    def system(parts: Sequence[dict[str, Statistic]]) -> tuple[dict, dict[str, Statistic]]:
        combined = {m: mean_over([run[m] for run in parts]) if len(parts) > 1 else parts[0][m] for m in names}
        out: dict = {}
        for m, statistic in combined.items():
            out[m] = point(statistic, n)
        out["intervals"] = {m: list(interval(s, n, resamples, seed, level)) for m, s in combined.items()}
        if len(parts) > 1:
            per_run = [{m: point(run[m], n) for m in names} for run in parts]
            out["runs"] = per_run
            out["std"] = {m: mean_std([r[m] for r in per_run])[1] for m in names}
        return out, combined

    report, combined = system(runs)
    if baseline:
        base_report, base_combined = system(baseline)
        names = [m for m in names if m in base_combined]
        report["baseline"] = base_report
        report["difference"] = {m: paired_summary(combined[m], base_combined[m], n, resamples, seed, level)
                                for m in names}
    report["bootstrap"] = settings(resamples, seed, level)
    return report


def report_lines(report: dict, digits: int = 4) -> list[str]:
    """Plain-text lines of a report_runs result (metric, value, interval; per-run values; the difference)."""
    lines = []

    def system_lines(part: dict, prefix: str = "") -> None:
        for m, (low, high) in part["intervals"].items():
            spread = f" +- {part['std'][m]:.{digits}f} over {len(part['runs'])} runs" if "std" in part else ""
            lines.append(f"{prefix}{m:18s} {part[m]:.{digits}f}{spread}  95% CI {format_interval(low, high, digits)}")
        for i, run in enumerate(part.get("runs", []), start=1):
            lines.append(f"{prefix}  run {i}: " + "  ".join(f"{m} {v:.{digits}f}" for m, v in run.items()))

    system_lines(report)
    if "baseline" in report:
        lines.append("baseline:")
        system_lines(report["baseline"], "  ")
        lines.append("difference (system - baseline, paired bootstrap):")
        for m, d in report["difference"].items():
            shown = format_interval(d["low"], d["high"], digits, signed=True)
            lines.append(f"  {m:16s} {d['value']:+.{digits}f}  95% CI {shown}")
    b = report["bootstrap"]
    lines.append(f"({b['method']}, {b['resamples']} resamples, seed {b['seed']})")
    return lines

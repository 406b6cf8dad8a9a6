"""Semantic textual similarity: Spearman rank correlation between the cosine of two sentence embeddings and the
gold similarity score (the STS Benchmark protocol, Cer et al. 2017, https://arxiv.org/abs/1708.00055; STS-B
scores are CC BY-SA 4.0). Spearman, not Pearson, is the headline number because only the ranking of pairs
matters for search, and cosine is not on the 0-5 scale of the scores.

Every figure comes with a bootstrap 95% interval over pairs (eval/bootstrap.py). Several models (the seeds of
one recipe) are reported as their mean, and a baseline (the untouched model) as a paired interval of the gain."""
from __future__ import annotations

import numpy as np

from ..data import read_records, require_fields
from . import bootstrap


def sts_cosines(model_dir, records: list[dict], sentence1_field: str = "sentence1",
                sentence2_field: str = "sentence2", batch_size: int = 64) -> np.ndarray:
    """cos(embed(s1), embed(s2)) of every record."""
    from ..index import SentenceEncoder

    encoder = SentenceEncoder.load(model_dir)
    a = encoder.encode([str(r[sentence1_field]) for r in records], batch_size=batch_size)
    b = encoder.encode([str(r[sentence2_field]) for r in records], batch_size=batch_size)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def sts_statistics(cosines, gold) -> dict[str, bootstrap.Statistic]:
    return {"spearman": bootstrap.spearman_of(cosines, gold), "pearson": bootstrap.pearson_of(cosines, gold)}


def evaluate_sts(model_dir, data_file, sentence1_field: str = "sentence1", sentence2_field: str = "sentence2",
                 score_field: str = "score", batch_size: int = 64, limit: int | None = None,
                 baseline=None, resamples: int = bootstrap.RESAMPLES, seed: int = bootstrap.SEED) -> dict:
    """Spearman and Pearson of cos(embed(s1), embed(s2)) against the gold scores of `data_file`, with bootstrap
    95% intervals. `model_dir` may be a list of models (seeds of one recipe: mean, std and per-model values);
    `baseline` (a model or a list) adds its figures and the paired interval of the difference."""
    from ..data import select_records

    records = select_records(read_records(data_file), limit)
    require_fields(records, [sentence1_field, sentence2_field, score_field], data_file)
    gold = [float(r[score_field]) for r in records]

    def runs(models) -> list[dict]:
        models = bootstrap.as_list(models)
        return [sts_statistics(sts_cosines(m, records, sentence1_field, sentence2_field, batch_size), gold)
                for m in models]

    report = bootstrap.report_runs(runs(model_dir), len(records), runs(baseline) if baseline else (),
                                   resamples, seed)
    return {**report, "num_pairs": len(records)}

"""Semantic textual similarity: Spearman rank correlation between the cosine of two sentence embeddings and the
gold similarity score (the STS Benchmark protocol, Cer et al. 2017, https://arxiv.org/abs/1708.00055; STS-B
scores are CC BY-SA 4.0). Spearman, not Pearson, is the headline number because only the ranking of pairs
matters for search, and cosine is not on the 0-5 scale of the scores."""
from __future__ import annotations

import numpy as np

from ..data import read_records, require_fields


def evaluate_sts(model_dir, data_file, sentence1_field: str = "sentence1", sentence2_field: str = "sentence2",
                 score_field: str = "score", batch_size: int = 64, limit: int | None = None) -> dict:
    """Spearman and Pearson of cos(embed(s1), embed(s2)) against the gold scores of `data_file`."""
    from scipy.stats import pearsonr, spearmanr

    from ..data import select_records
    from ..index import SentenceEncoder

    records = select_records(read_records(data_file), limit)
    require_fields(records, [sentence1_field, sentence2_field, score_field], data_file)
    gold = [float(r[score_field]) for r in records]
    encoder = SentenceEncoder.load(model_dir)
    a = encoder.encode([str(r[sentence1_field]) for r in records], batch_size=batch_size)
    b = encoder.encode([str(r[sentence2_field]) for r in records], batch_size=batch_size)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return {"spearman": float(spearmanr(cos, gold).statistic), "pearson": float(pearsonr(cos, gold).statistic),
            "num_pairs": len(records)}

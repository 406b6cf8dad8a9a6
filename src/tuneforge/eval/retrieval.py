"""Retrieval evaluation on BEIR-style data: rank the whole corpus for every query, score with trec_eval.

Metrics come from pytrec_eval (Van Gysel & de Rijke 2018, https://arxiv.org/abs/1805.01597), the Python
binding of NIST's trec_eval that BEIR itself uses, so the numbers match published BEIR tables:
- nDCG@10 = DCG@10 / IDCG@10, DCG@k = sum_{i<=k} rel_i / log2(i + 1)  (trec_eval `ndcg_cut_10`);
- MRR@10 = mean over queries of 1 / rank of the first relevant document within the top 10, else 0
  (trec_eval `recip_rank` on each query's top-10 list);
- Recall@100 = |relevant in top 100| / |relevant|  (trec_eval `recall_100`).
All are means over the queries that have judgements.

The ranking goes through the same persisted faiss index as `tuneforge search` (see tuneforge.index).
"""
from __future__ import annotations

from ..data.beir import load_beir
from ..errors import ConfigError
from . import bootstrap

DEPTH = 100


def per_query_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """nDCG@10, MRR@10, Recall@100 of each query in qrels, in qrels order (a query missing from run scores 0)."""
    import pytrec_eval

    run = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    short = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {"ndcg@10": [full.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels],
            "mrr@10": [short.get(q, {}).get("recip_rank", 0.0) for q in qrels],
            "recall@100": [full.get(q, {}).get("recall_100", 0.0) for q in qrels]}


def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 (means over the queries in qrels; a query missing from run scores 0)."""
    n = len(qrels)
    return {k: sum(v) / n if n else 0.0 for k, v in per_query_metrics(qrels, run).items()}


def sample_corpus(corpus: dict[str, str], qrels: dict[str, dict[str, int]], max_docs: int | None,
                  seed: int = 0) -> dict[str, str]:
    """Every judged document of the evaluated queries plus a seeded random sample of the others, max_docs in all
    (at least the judged ones). A smaller haystack makes scores optimistic: for quick checks, not for reports
    against published numbers."""
    import random

    if max_docs is None or max_docs >= len(corpus):
        return corpus
    judged = {d for docs in qrels.values() for d in docs}
    others = sorted(set(corpus) - judged)
    keep = judged | set(random.Random(seed).sample(others, max(0, min(len(others), max_docs - len(judged)))))
    return {d: t for d, t in corpus.items() if d in keep}


def _ranked(model_dir, data, query_ids, corpus, index_dir, batch_size) -> dict[str, dict[str, float]]:
    from ..index import SentenceEncoder, corpus_index

    encoder = SentenceEncoder.load(model_dir)
    index = corpus_index(encoder, corpus, index_dir, batch_size)
    hits = index.search(encoder.encode([data.queries[q] for q in query_ids], batch_size=batch_size), DEPTH)
    return {q: dict(row) for q, row in zip(query_ids, hits)}


def evaluate_retrieval(model_dir, data_dir, split: str = "validation", index_dir=None, batch_size: int = 64,
                       max_queries: int | None = None, max_docs: int | None = None, baseline=None,
                       resamples: int = bootstrap.RESAMPLES, seed: int = bootstrap.SEED,
                       baseline_index_dir=None) -> dict:
    """Score `model_dir` (alias, model / adapter / run directory) on a BEIR split of `data_dir`.

    The corpus is encoded once into a faiss index at `index_dir` (kept for `tuneforge search`), or into a
    temporary one; an existing `index_dir` built with the same model is reused, so a second evaluation only
    encodes the queries. max_queries / max_docs evaluate a seeded subset (see sample_corpus). Returns the metrics
    with bootstrap 95% intervals over queries, plus num_queries and num_docs. `model_dir` may be a list (seeds
    of one recipe: mean, std, per-model values); `baseline` (a model or list) adds the paired interval of the
    difference. With several models `index_dir` may be a list, one index per model in order (a single one serves
    the first model only); `baseline_index_dir` likewise for the baselines (the untouched model's corpus index,
    built once, e.g. when mining hard negatives), so the seeds of a recipe evaluated one by one are not encoded
    again when they are compared together."""
    data = load_beir(data_dir, split)
    query_ids = sorted(data.queries)[:max_queries] if max_queries else sorted(data.queries)
    qrels = {q: data.qrels[q] for q in query_ids}
    corpus = sample_corpus(data.corpus, qrels, max_docs)

    def runs(models, index_dirs=None) -> list[dict]:
        models, index_dirs = bootstrap.as_list(models), bootstrap.as_list(index_dirs)
        if len(index_dirs) > len(models):
            raise ConfigError(f"{len(index_dirs)} index directories for {len(models)} model(s): give at most one "
                              f"per model, in order", key="index")
        out = []
        for i, model in enumerate(models):
            ranked = _ranked(model, data, query_ids, corpus, index_dirs[i] if i < len(index_dirs) else None,
                             batch_size)
            out.append({k: bootstrap.mean_of(v) for k, v in per_query_metrics(qrels, ranked).items()})
        return out

    report = bootstrap.report_runs(runs(model_dir, index_dir), len(query_ids), runs(baseline, baseline_index_dir) if baseline else (),
                                   resamples, seed)
    return {**report, "num_queries": len(query_ids), "num_docs": len(corpus)}

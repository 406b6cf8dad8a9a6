"""Hard-negative mining for contrastive embedding fine-tuning.

In-batch negatives alone are mostly easy (a random abstract rarely resembles the claim), so on a small training
set the loss is near zero after an epoch and the model learns little that helps it tell *close* documents apart,
which is what ranking the whole corpus needs. A hard negative is a document the starting model ranks high for a
query but that is not judged relevant. The ranks nearest the top are skipped (`skip_top`): a judged collection
leaves relevant documents unjudged, and those sit exactly there (false negatives hurt more than easy ones).
Negatives are drawn at random, seeded, from ranks skip_top+1 .. depth (the recipe of sentence-transformers'
`mine_hard_negatives` with a rank range and random sampling; Karpukhin et al. 2020, Xiong et al. 2021).

The output is JSON Lines of {anchor, positive, positive_id, negative: [texts], negative_ids: [...]}, which
`task: embed, loss: mnrl` trains on directly (every negative becomes one more column of the similarity matrix).
"""
from __future__ import annotations

import random
from pathlib import Path

from ..data.beir import load_beir
from ..errors import ConfigError, DataError
from .api import build_index
from .encoder import SentenceEncoder
from .store import VectorIndex


def corpus_index(encoder: SentenceEncoder, corpus: dict[str, str], index_dir=None,
                 batch_size: int = 64) -> VectorIndex:
    """The corpus encoded by `encoder`: reuse `index_dir` when it holds exactly this corpus made by this model,
    otherwise encode it (and save to `index_dir` when given)."""
    if index_dir is not None and (Path(index_dir) / "meta.json").exists():
        index = VectorIndex.load(index_dir)
        if index.meta.get("model") == encoder.name and set(index.doc_ids) == set(corpus):
            return index
    if index_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tuneforge-mine-") as scratch:
            return build_index(encoder, corpus, Path(scratch) / "index", batch_size=batch_size)
    return build_index(encoder, corpus, index_dir, batch_size=batch_size)


def mine_hard_negatives(model, data_dir, split: str = "train", num_negatives: int = 1, skip_top: int = 5,
                        depth: int = 50, index_dir=None, seed: int = 42, batch_size: int = 64,
                        allow_pickle: bool = False) -> list[dict]:
    """One record per relevant (query, document) pair of a BEIR split, with `num_negatives` mined documents.

    model: alias / model dir / run dir (the model that will be fine-tuned, normally). A query with fewer than
    `num_negatives` unjudged documents in its ranks skip_top+1..depth gets what there is (at least one, else it
    is a DataError: raise depth). allow_pickle: also load an encoder stored as pickles."""
    if num_negatives < 1:
        raise ConfigError("num_negatives must be at least 1", key="num_negatives")
    if skip_top < 0 or depth <= skip_top:
        raise ConfigError(f"need 0 <= skip_top < depth, got skip_top={skip_top}, depth={depth}", key="depth")
    data = load_beir(data_dir, split)
    encoder = model if isinstance(model, SentenceEncoder) else SentenceEncoder.load(model, allow_pickle=allow_pickle)
    index = corpus_index(encoder, data.corpus, index_dir, batch_size)
    query_ids = sorted(data.queries)
    hits = index.search(encoder.encode([data.queries[q] for q in query_ids], batch_size=batch_size),
                        min(depth, len(index)))
    rng = random.Random(seed)
    records = []
    for qid, row in zip(query_ids, hits):
        relevant = {d for d, score in data.qrels[qid].items() if score > 0}
        pool = [d for d, _ in row[skip_top:] if d not in data.qrels[qid]]
        if not pool:
            raise DataError(f"query {qid!r}: no unjudged document in ranks {skip_top + 1}..{depth}; raise depth")
        for did in sorted(relevant):
            negatives = rng.sample(pool, min(num_negatives, len(pool)))
            records.append({"anchor": data.queries[qid], "positive": data.corpus[did], "positive_id": did,
                            "negative": [data.corpus[n] for n in negatives], "negative_ids": negatives})
    if not records:
        raise DataError(f"no relevant (score > 0) judgements in split {split!r}", file=data_dir)
    return records

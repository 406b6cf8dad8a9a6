"""`build_index`, `add_to_index`, `search`: the Python API behind `tuneforge index build|add` and
`tuneforge search`. A corpus file is JSON Lines (or .json/.csv/.parquet) of {"doc_id", "text", "title"?}
records, the BEIR corpus layout; a document's text is "title text"."""
from __future__ import annotations

from pathlib import Path

from ..data.beir import read_corpus
from ..errors import DataError
from .encoder import SentenceEncoder
from .store import IndexMismatch, VectorIndex


def _encoder(model, allow_pickle: bool = False) -> SentenceEncoder:
    return model if isinstance(model, SentenceEncoder) else SentenceEncoder.load(model, allow_pickle=allow_pickle)


def _documents(corpus) -> dict[str, str]:
    """doc_id -> text from a corpus file or an in-memory mapping; empty -> DataError."""
    docs = dict(corpus) if isinstance(corpus, dict) else read_corpus(corpus)
    if not docs:
        raise DataError("the corpus is empty", file=None if isinstance(corpus, dict) else corpus)
    return docs


def build_index(model, corpus, out, kind: str = "flat", batch_size: int = 64,
                allow_pickle: bool = False) -> VectorIndex:
    """Encode every document of `corpus` with `model` (alias, model/adapter/run dir, or a SentenceEncoder)
    and write a new index directory at `out` (replacing one that is there only once the new one is complete).
    allow_pickle: also load an encoder stored as pickles (pytorch_model.bin, adapter_model.bin)."""
    docs = _documents(corpus)
    encoder = _encoder(model, allow_pickle)
    index = VectorIndex.create(encoder.dim, kind, model=encoder.name, pooling=encoder.pooling,
                               normalize=encoder.normalize, max_length=encoder.max_length)
    ids = list(docs)
    index.add(ids, encoder.encode([docs[i] for i in ids], batch_size=batch_size), [docs[i] for i in ids])
    index.save(out)
    return index


def add_to_index(index_dir, corpus, model=None, batch_size: int = 64, allow_pickle: bool = False) -> VectorIndex:
    """Encode new documents with the index's own model (or `model`) and append them; ids must be new."""
    index = VectorIndex.load(index_dir)
    encoder = _encoder(model if model is not None else index.meta["model"], allow_pickle)
    if encoder.dim != index.dim:
        raise IndexMismatch(f"{index_dir}: the index holds {index.dim}-d vectors but model {encoder.name!r} "
                            f"makes {encoder.dim}-d ones")
    docs = _documents(corpus)
    ids = list(docs)
    index.add(ids, encoder.encode([docs[i] for i in ids], batch_size=batch_size), [docs[i] for i in ids])
    index.save(index_dir)
    return index


def search(index_dir, queries, k: int = 10, model=None, allow_pickle: bool = False) -> list[list[dict]]:
    """Top-k documents per query: [{"doc_id", "score", "text"}], best first. `queries` is a string or a list."""
    single = isinstance(queries, str)
    queries = [queries] if single else list(queries)
    index = index_dir if isinstance(index_dir, VectorIndex) else VectorIndex.load(Path(index_dir))
    encoder = _encoder(model if model is not None else index.meta["model"], allow_pickle)
    if encoder.dim != index.dim:
        raise IndexMismatch(f"the index holds {index.dim}-d vectors but model {encoder.name!r} makes "
                            f"{encoder.dim}-d ones")
    position = {doc_id: i for i, doc_id in enumerate(index.doc_ids)}
    hits = index.search(encoder.encode(queries), k)
    results = [[{"doc_id": d, "score": s, "text": index.texts[position[d]]} for d, s in row] for row in hits]
    return results[0] if single else results

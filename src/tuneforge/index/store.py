"""A persisted vector index over documents: faiss (Johnson et al. 2017, https://arxiv.org/abs/1702.08734) for
the vectors, JSON Lines for the ids and texts, one JSON file for what produced them.

Directory layout (written atomically, so an interrupted build or add leaves the previous index intact):

    index.faiss     the faiss index (inner product on unit vectors = cosine similarity)
    docs.jsonl      {"doc_id", "text"} per row, row i = faiss id i
    meta.json       {"model", "dim", "kind", "count", "pooling", "normalize", "max_length"}

`kind` is `flat` (exact search, right up to about a million vectors) or `hnsw` (approximate graph search,
Malkov & Yashunin 2016, https://arxiv.org/abs/1603.09320). Both accept incremental `add`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, TuneforgeError
from ..io import atomic_dir

INDEX_FILE, DOCS_FILE, META_FILE = "index.faiss", "docs.jsonl", "meta.json"
KINDS = ("flat", "hnsw")


class IndexMismatch(TuneforgeError, ValueError):
    """An index on disk does not fit what is asked of it (another embedding size, missing or corrupt files)."""


def _new_faiss(dim: int, kind: str):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    raise TuneforgeError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")


@dataclass
class VectorIndex:
    meta: dict
    doc_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    faiss_index: object = None

    @classmethod
    def create(cls, dim: int, kind: str = "flat", **meta) -> "VectorIndex":
        return cls(meta={"dim": int(dim), "kind": kind, "count": 0, **meta}, faiss_index=_new_faiss(dim, kind))

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return len(self.doc_ids)

    def add(self, doc_ids: list[str], vectors: np.ndarray, texts: list[str]) -> None:
        """Append documents; an id already present (or repeated in the call) is a DataError."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexMismatch(f"vectors have shape {tuple(vectors.shape)}, the index holds {self.dim}-d vectors "
                                f"(built with model {self.meta.get('model')!r})")
        if not (len(doc_ids) == len(texts) == vectors.shape[0]):
            raise TuneforgeError("doc_ids, texts and vectors must have the same length")
        seen = set(self.doc_ids)
        for doc_id in doc_ids:
            if doc_id in seen:
                raise DataError(f"document id {doc_id!r} is already in the index", key="doc_id")
            seen.add(doc_id)
        self.faiss_index.add(vectors)
        self.doc_ids += list(doc_ids)
        self.texts += list(texts)
        self.meta["count"] = len(self.doc_ids)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        """Top-k (doc_id, cosine) per query row, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexMismatch(f"query vectors are {queries.shape[-1]}-d, the index holds {self.dim}-d vectors "
                                f"(built with model {self.meta.get('model')!r})")
        k = min(k, len(self))
        if k == 0:
            return [[] for _ in range(queries.shape[0])]
        scores, rows = self.faiss_index.search(queries, k)
        return [[(self.doc_ids[r], float(s)) for r, s in zip(rs, ss) if r >= 0] for rs, ss in zip(rows, scores)]

    def save(self, path) -> Path:
        import faiss

        with atomic_dir(path) as tmp:
            faiss.write_index(self.faiss_index, str(tmp / INDEX_FILE))
            with open(tmp / DOCS_FILE, "w", encoding="utf-8") as f:
                for doc_id, text in zip(self.doc_ids, self.texts):
                    f.write(json.dumps({"doc_id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path) -> "VectorIndex":
        """Read an index directory, checking that its three files agree (dimension and row count)."""
        import faiss

        root = Path(path)
        missing = [n for n in (INDEX_FILE, DOCS_FILE, META_FILE) if not (root / n).exists()]
        if missing:
            raise IndexMismatch(f"{root}: not a tuneforge index (missing {', '.join(missing)}); "
                                "create one with `tuneforge index build`")
        meta = json.loads((root / META_FILE).read_text())
        index = faiss.read_index(str(root / INDEX_FILE))
        if index.d != int(meta.get("dim", -1)):
            raise IndexMismatch(f"{root}: {INDEX_FILE} holds {index.d}-d vectors but {META_FILE} says "
                                f"{meta.get('dim')}-d; rebuild the index")
        doc_ids, texts = [], []
        for n, line in enumerate((root / DOCS_FILE).read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
                doc_ids.append(str(row["doc_id"]))
                texts.append(row.get("text", ""))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError("malformed index row", file=root / DOCS_FILE, line=n) from None
        if index.ntotal != len(doc_ids):
            raise IndexMismatch(f"{root}: {INDEX_FILE} holds {index.ntotal} vectors but {DOCS_FILE} "
                                f"{len(doc_ids)} documents; rebuild the index")
        return cls(meta=meta, doc_ids=doc_ids, texts=texts, faiss_index=index)

"""BEIR-style retrieval data: a corpus, queries per split and binary relevance judgements (qrels).

Layout of a data directory (as `../shared/data/scifact`, Wadden et al. 2020 / BEIR, Thakur et al. 2021,
https://arxiv.org/abs/2104.08663; SciFact is CC BY-NC 2.0, non-commercial):

    corpus.jsonl             {"doc_id": str, "title": str, "text": str}
    queries_{split}.jsonl    {"query_id": str, "text": str}
    qrels_{split}.jsonl      {"query_id": str, "doc_id": str, "score": int}

Everything is checked when read, because a retrieval metric computed over judgements that name documents the
corpus lacks is silently wrong: unknown ids, duplicate ids and empty files are DataErrors naming file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.data_sets import resolve_data_path
from ..errors import DataError
from .readers import Record, line_of, read_records, require_fields


@dataclass
class BeirData:
    """One split: corpus (doc_id -> text), queries (query_id -> text), qrels (query_id -> {doc_id: score})."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def document_text(record: dict) -> str:
    """What gets embedded for a document: "title text", as BEIR's sentence-transformers baseline does."""
    title = str(record.get("title") or "").strip()
    text = str(record.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def _unique_ids(records: list[dict], key: str, path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i, rec in enumerate(records):
        ident = str(rec[key])
        if ident in out:
            raise DataError(f"duplicate {key} {ident!r}", file=path, line=line_of(rec, i), key=key)
        out[ident] = rec
    return out


def read_corpus(path: str | Path) -> dict[str, str]:
    """doc_id -> document text. An empty corpus or a document with no text is a DataError."""
    records = read_records(path)
    require_fields(records, ["doc_id", "text"], path)
    docs = _unique_ids(records, "doc_id", path)
    corpus = {}
    for i, (doc_id, rec) in enumerate(docs.items()):
        text = document_text(rec)
        if not text:
            raise DataError(f"document {doc_id!r} has no title or text", file=path, line=line_of(rec, i), key="text")
        corpus[doc_id] = text
    return corpus


def read_queries(path: str | Path) -> dict[str, str]:
    records = read_records(path)
    require_fields(records, ["query_id", "text"], path)
    return {qid: str(rec["text"]) for qid, rec in _unique_ids(records, "query_id", path).items()}


def read_qrels(path: str | Path, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    """query_id -> {doc_id: relevance}; every id must exist in corpus / queries (DataError with the line)."""
    records = read_records(path)
    require_fields(records, ["query_id", "doc_id"], path)
    qrels: dict[str, dict[str, int]] = {}
    for i, rec in enumerate(records):
        qid, did = str(rec["query_id"]), str(rec["doc_id"])
        if qid not in queries:
            raise DataError(f"qrels name unknown query {qid!r}", file=path, line=line_of(rec, i), key="query_id")
        if did not in corpus:
            raise DataError(f"qrels name document {did!r}, which is not in the corpus", file=path,
                            line=line_of(rec, i), key="doc_id")
        try:
            score = int(rec.get("score", 1))
        except (TypeError, ValueError):
            raise DataError(f"score must be an integer, got {rec.get('score')!r}", file=path, line=line_of(rec, i),
                            key="score") from None
        qrels.setdefault(qid, {})[did] = score
    return qrels


def split_paths(data_dir: str | Path, split: str) -> tuple[Path, Path, Path]:
    """(corpus, queries, qrels) paths of a split; DataError listing the splits present when one is missing."""
    root = Path(resolve_data_path(data_dir))
    if not root.is_dir():
        raise DataError("not a directory (expected corpus.jsonl, queries_<split>.jsonl, qrels_<split>.jsonl)",
                        file=root)
    paths = (root / "corpus.jsonl", root / f"queries_{split}.jsonl", root / f"qrels_{split}.jsonl")
    for p in paths:
        if not p.exists():
            have = sorted(q.stem.split("_", 1)[1] for q in root.glob("qrels_*.jsonl"))
            raise DataError(f"missing {p.name}; splits here: {', '.join(have) or 'none'}", file=p)
    return paths


def load_beir(data_dir: str | Path, split: str = "validation") -> BeirData:
    """Read and cross-check one split. Queries without any judgement are dropped (they cannot be scored)."""
    corpus_path, queries_path, qrels_path = split_paths(data_dir, split)
    corpus = read_corpus(corpus_path)
    queries = read_queries(queries_path)
    qrels = read_qrels(qrels_path, corpus, queries)
    return BeirData(corpus=corpus, queries={q: t for q, t in queries.items() if q in qrels}, qrels=qrels)


def pairs_from_qrels(qrels_path: str | Path) -> list[dict]:
    """(query, relevant document) training pairs from a qrels file, its queries file (the same name with
    "qrels" replaced by "queries") and corpus.jsonl beside it. Each pair keeps its qrels line for errors."""
    qrels_path = Path(resolve_data_path(qrels_path))
    queries_path = qrels_path.with_name(qrels_path.name.replace("qrels", "queries", 1))
    corpus = read_corpus(qrels_path.with_name("corpus.jsonl"))
    queries = read_queries(queries_path)
    qrels = read_qrels(qrels_path, corpus, queries)
    lines = {(str(r["query_id"]), str(r["doc_id"])): line_of(r, i) for i, r in enumerate(read_records(qrels_path))}
    pairs = []
    for qid, docs in qrels.items():
        for did, score in docs.items():
            if score > 0:
                pairs.append(Record({"anchor": queries[qid], "positive": corpus[did], "positive_id": did},
                                    lines[(qid, did)]))
    if not pairs:
        raise DataError("no relevant (score > 0) query-document pairs", file=qrels_path)
    return pairs

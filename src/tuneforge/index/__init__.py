"""Semantic search: sentence encoders, a persisted faiss vector index, and the functions behind
`tuneforge index build|add` and `tuneforge search`."""
from .api import add_to_index, build_index, search
from .encoder import SentenceEncoder, export_sentence_transformer, write_sentence_transformer
from .mine import corpus_index, mine_hard_negatives
from .store import IndexMismatch, VectorIndex

__all__ = [
    "IndexMismatch",
    "SentenceEncoder",
    "VectorIndex",
    "add_to_index",
    "build_index",
    "corpus_index",
    "export_sentence_transformer",
    "mine_hard_negatives",
    "search",
    "write_sentence_transformer",
]

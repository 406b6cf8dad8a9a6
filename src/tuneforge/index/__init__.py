"""Semantic search: sentence encoders, a persisted faiss vector index, and the functions behind
`tuneforge index build|add` and `tuneforge search`."""
from .api import add_to_index, build_index, search
from .encoder import SentenceEncoder, export_sentence_transformer, write_sentence_transformer
from .store import IndexMismatch, VectorIndex

__all__ = [
    "IndexMismatch",
    "SentenceEncoder",
    "VectorIndex",
    "add_to_index",
    "build_index",
    "export_sentence_transformer",
    "search",
    "write_sentence_transformer",
]

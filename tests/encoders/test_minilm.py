"""The packaged all-MiniLM-L6-v2 (slow: real weights, a few seconds): our encoder equals sentence-transformers on
the same directory, and a retrieval over the fixture corpus ranks a document's own text first."""
import numpy as np
import pytest

from tuneforge.index import SentenceEncoder

from .conftest import FIXTURES

pytestmark = pytest.mark.slow


def test_encoder_matches_sentence_transformers_on_packaged_minilm():
    from sentence_transformers import SentenceTransformer

    from tuneforge.models.packaged import packaged_path

    texts = ["A man is playing a guitar.", "Vitamin D deficiency is associated with higher mortality in adults."]
    ours = SentenceEncoder.load("all-minilm-l6-v2")
    assert (ours.pooling, ours.normalize, ours.max_length) == ("mean", True, 256)
    theirs = SentenceTransformer(str(packaged_path("all-minilm-l6-v2")), device="cpu").encode(texts)
    np.testing.assert_allclose(ours.encode(texts), theirs, atol=1e-5)


def test_minilm_retrieval_on_fixture_slice(tmp_path):
    from tuneforge.eval.retrieval import evaluate_retrieval

    m = evaluate_retrieval("all-minilm-l6-v2", FIXTURES / "scifact", "validation", index_dir=tmp_path / "idx")
    assert m["ndcg@10"] > 0.5  # the untouched model already retrieves well on SciFact

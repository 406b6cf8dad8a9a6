"""Few-shot demonstrations: seeded random picks, exact nearest-neighbour retrieval, turns in the right place."""
import torch

from tuneforge.eval.icl import NearestNeighbours, PromptEncoder, random_demonstrations, retrieved_demonstrations, with_demonstrations


def test_random_demonstrations_are_distinct_seeded_and_per_example():
    first = random_demonstrations(5, 10, 3, seed=1)
    assert first == random_demonstrations(5, 10, 3, seed=1)
    assert all(len(set(ids)) == 3 for ids in first)
    assert len({tuple(ids) for ids in first}) > 1  # not one shared set
    assert random_demonstrations(2, 2, 5, seed=0)[0] in ([0, 1], [1, 0])  # k capped at the pool size


def test_exact_search_returns_the_nearest_first():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=-1)
    index = NearestNeighbours(vectors)
    assert index.search(torch.tensor([[1.0, 0.1]]), 2) == [[0, 2]]
    assert index.search(torch.tensor([[0.0, 1.0]]), 5) == [[1, 2, 0]]


def test_encoder_embeds_unit_vectors_and_retrieval_finds_the_same_text(encoder_dir, tmp_path):
    encoder = PromptEncoder(encoder_dir, cache_dir=tmp_path / "cache")
    pool = ["the cat sat", "stock markets fell", "a recipe for bread", "rain tomorrow"]
    vectors = encoder.encode(pool)
    assert vectors.shape[0] == 4 and torch.allclose(vectors.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert list((tmp_path / "cache").glob("embeddings-*.pt"))  # stored once, read back next time
    assert torch.equal(encoder.encode(pool), vectors)
    hits = retrieved_demonstrations(encoder, ["a recipe for bread", "the cat sat"], pool, 2)
    assert hits[0][-1] == 2 and hits[1][-1] == 0  # the most similar demonstration sits next to the query


def test_demonstrations_go_between_system_and_query():
    conversation = [{"role": "system", "content": "sys"}, {"role": "user", "content": "query"}]
    demo = ([{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"}], "a1")
    out = with_demonstrations(conversation, [demo, ([{"role": "user", "content": "q2"}], "a2")])
    assert [m["content"] for m in out] == ["sys", "q1", "a1", "q2", "a2", "query"]
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert with_demonstrations([{"role": "user", "content": "x"}], []) == [{"role": "user", "content": "x"}]

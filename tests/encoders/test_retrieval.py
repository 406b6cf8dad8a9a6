"""BEIR loading with its checks, retrieval metrics against hand computation, evaluate_retrieval and evaluate_sts
end to end on the fixture slices."""
import json
import math
import shutil

import pytest

from tuneforge.data.beir import load_beir, pairs_from_qrels
from tuneforge.errors import DataError
from tuneforge.eval.retrieval import evaluate_retrieval, retrieval_metrics
from tuneforge.eval.sts import evaluate_sts

from .conftest import FIXTURES


def test_load_beir_fixture():
    data = load_beir(FIXTURES / "scifact", "validation")
    assert len(data.queries) == 8 and len(data.corpus) == 42
    assert all(did in data.corpus for docs in data.qrels.values() for did in docs)


def test_pairs_from_qrels_join_query_and_document_text():
    pairs = pairs_from_qrels(FIXTURES / "scifact" / "qrels_train.jsonl")
    assert len(pairs) == 14 and all(p["anchor"] and p["positive"] for p in pairs)
    assert pairs[0].line == 1


@pytest.fixture
def scifact_copy(tmp_path):
    return shutil.copytree(FIXTURES / "scifact", tmp_path / "scifact")


def test_qrels_naming_an_unknown_document_is_an_error_with_its_line(scifact_copy):
    path = scifact_copy / "qrels_validation.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["doc_id"] = "no-such-doc"
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"qrels_validation.jsonl:3.*'no-such-doc', which is not in the corpus"):
        load_beir(scifact_copy, "validation")


def test_empty_corpus_and_missing_split_are_errors(scifact_copy):
    with pytest.raises(DataError, match="missing queries_test.jsonl; splits here: train, validation"):
        load_beir(scifact_copy, "test")
    (scifact_copy / "corpus.jsonl").write_text("")
    with pytest.raises(DataError, match="corpus.jsonl.*empty"):
        load_beir(scifact_copy, "validation")


def test_metrics_by_hand():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"z": 1}}
    run = {"q1": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6}, "q2": {f"d{i}": 1.0 - i / 100 for i in range(11)}}
    run["q2"]["z"] = 0.5  # rank 12: outside the top 10
    m = retrieval_metrics(qrels, run)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg / idcg + 0.0) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 0.0) / 2)
    assert m["recall@100"] == pytest.approx((1.0 + 1.0) / 2)


def test_query_missing_from_run_scores_zero():
    m = retrieval_metrics({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}})
    assert m["ndcg@10"] == pytest.approx(0.5) and m["mrr@10"] == pytest.approx(0.5)


def brute_force_ndcg10(model_dir) -> float:
    """nDCG@10 by hand: every document scored by a plain dot product of the normalised embeddings (no index),
    DCG = sum rel / log2(rank + 1) over the top 10, divided by the ideal DCG, averaged over the queries."""
    import numpy as np

    from tuneforge.index import SentenceEncoder

    data = load_beir(FIXTURES / "scifact", "validation")
    encoder = SentenceEncoder.load(model_dir)
    doc_ids = sorted(data.corpus)
    docs = encoder.encode([data.corpus[d] for d in doc_ids])
    total = 0.0
    for q in sorted(data.queries):
        scores = docs @ encoder.encode([data.queries[q]])[0]
        ranked = [doc_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        rels = data.qrels[q]
        dcg = sum(rels.get(d, 0) / math.log2(rank + 2) for rank, d in enumerate(ranked))
        ideal = sum(r / math.log2(rank + 2) for rank, r in enumerate(sorted(rels.values(), reverse=True)[:10]))
        total += dcg / ideal
    return total / len(data.queries)


def test_evaluate_retrieval_reuses_its_index(tiny_bert_dir, tmp_path):
    first = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", "validation", index_dir=tmp_path / "idx")
    assert first["num_queries"] == 8 and first["num_docs"] == 42
    assert first["ndcg@10"] == pytest.approx(brute_force_ndcg10(tiny_bert_dir), abs=1e-6)
    assert first["recall@100"] == pytest.approx(1.0)  # 42 docs < 100
    stamp = (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns
    again = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", "validation", index_dir=tmp_path / "idx")
    assert again == first and (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns == stamp


def test_the_baseline_index_is_kept_and_reused(tiny_bert_dir, tmp_path):
    """--baseline-index: the untouched model's corpus is encoded once (e.g. when mining), not per comparison."""
    first = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", baseline=tiny_bert_dir,
                               baseline_index_dir=tmp_path / "base", resamples=50)
    assert first["difference"]["ndcg@10"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert not (tmp_path / "idx").exists() and (tmp_path / "base" / "index.faiss").is_file()
    stamp = (tmp_path / "base" / "index.faiss").stat().st_mtime_ns
    again = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", baseline=tiny_bert_dir,
                               baseline_index_dir=tmp_path / "base", resamples=50)
    assert again == first and (tmp_path / "base" / "index.faiss").stat().st_mtime_ns == stamp
    # one index per model, in order: seeds scored one by one are not encoded again when scored together
    two = evaluate_retrieval([tiny_bert_dir, tiny_bert_dir], FIXTURES / "scifact", index_dir=[tmp_path / "a",
                             tmp_path / "b"], baseline=tiny_bert_dir, baseline_index_dir=tmp_path / "base",
                             resamples=50)
    assert (tmp_path / "a" / "index.faiss").is_file() and (tmp_path / "b" / "index.faiss").is_file()
    assert two["ndcg@10"] == pytest.approx(first["ndcg@10"]) and two["std"]["ndcg@10"] == 0.0
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="index directories"):
        evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", index_dir=[tmp_path / "a", tmp_path / "b"])


def test_evaluate_sts(tiny_bert_dir):
    m = evaluate_sts(tiny_bert_dir, FIXTURES / "stsb_validation.jsonl")
    assert m["num_pairs"] == 16 and m["spearman"] == pytest.approx(rank_correlation(tiny_bert_dir), abs=1e-9)


def rank_correlation(model_dir) -> float:
    """Spearman by hand: Pearson correlation of the ranks (ties share their mean rank) of the cosines of the
    two sentences' embeddings and of the gold scores."""
    import numpy as np

    from tuneforge.index import SentenceEncoder

    rows = [json.loads(line) for line in (FIXTURES / "stsb_validation.jsonl").read_text().splitlines()]
    encoder = SentenceEncoder.load(model_dir)
    a = encoder.encode([r["sentence1"] for r in rows])
    b = encoder.encode([r["sentence2"] for r in rows])
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    def ranks(values):
        values = list(map(float, values))
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return np.array(out)

    return float(np.corrcoef(ranks(cos), ranks([float(r["score"]) for r in rows]))[0, 1])


def test_cli_retrieval_and_sts_eval(tiny_bert_dir, capsys, tmp_path):
    from tuneforge.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["retrieval-eval", "--model", str(tiny_bert_dir), "--data", str(FIXTURES / "scifact"), "--json"])
    assert done.value.code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@100", "num_queries", "num_docs", "intervals", "bootstrap"}
    for name, (low, high) in metrics["intervals"].items():
        assert low <= metrics[name] <= high
    with pytest.raises(SystemExit) as done:  # two models, each its own kept index
        main(["retrieval-eval", "--model", str(tiny_bert_dir), "--data", str(FIXTURES / "scifact"), "--json",
              "--model", str(tiny_bert_dir), "--index", str(tmp_path / "a"), "--index", str(tmp_path / "b")])
    assert done.value.code == 0 and len(json.loads(capsys.readouterr().out)["runs"]) == 2
    assert (tmp_path / "a" / "index.faiss").is_file() and (tmp_path / "b" / "index.faiss").is_file()
    with pytest.raises(SystemExit):
        main(["sts-eval", "--model", str(tiny_bert_dir), "--data", str(FIXTURES / "stsb_validation.jsonl")])
    assert "spearman" in capsys.readouterr().out
    with pytest.raises(SystemExit) as failed:
        main(["retrieval-eval", "--model", str(tiny_bert_dir), "--data", str(FIXTURES / "scifact"), "--split", "test"])
    assert failed.value.code == 2 and "splits here: train, validation" in capsys.readouterr().err


def test_corpus_sample_keeps_every_judged_document(tiny_bert_dir):
    from tuneforge.eval.retrieval import sample_corpus

    data = load_beir(FIXTURES / "scifact", "validation")
    judged = {d for docs in data.qrels.values() for d in docs}
    sample = sample_corpus(data.corpus, data.qrels, len(judged) + 5)
    assert judged <= set(sample) and len(sample) == len(judged) + 5
    assert sample == sample_corpus(data.corpus, data.qrels, len(judged) + 5)  # seeded
    m = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", "validation", max_docs=len(judged) + 5)
    assert m["num_docs"] == len(judged) + 5

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


def test_evaluate_retrieval_reuses_its_index(tiny_bert_dir, tmp_path):
    first = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", "validation", index_dir=tmp_path / "idx")
    assert first["num_queries"] == 8 and first["num_docs"] == 42
    assert 0.0 <= first["ndcg@10"] <= 1.0 and first["recall@100"] == pytest.approx(1.0)  # 42 docs < 100
    stamp = (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns
    again = evaluate_retrieval(tiny_bert_dir, FIXTURES / "scifact", "validation", index_dir=tmp_path / "idx")
    assert again == first and (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns == stamp


def test_evaluate_sts(tiny_bert_dir):
    m = evaluate_sts(tiny_bert_dir, FIXTURES / "stsb_validation.jsonl")
    assert m["num_pairs"] == 16 and -1.0 <= m["spearman"] <= 1.0


def test_cli_retrieval_and_sts_eval(tiny_bert_dir, capsys):
    from tuneforge.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["retrieval-eval", "--model", str(tiny_bert_dir), "--data", str(FIXTURES / "scifact"), "--json"])
    assert done.value.code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@100", "num_queries", "num_docs"}
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

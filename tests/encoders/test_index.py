"""The persisted faiss index: build, search, reload, incremental add, and the errors that leave it intact."""
import json
import shutil

import numpy as np
import pytest

from tuneforge.cli.main import main
from tuneforge.errors import DataError
from tuneforge.index import IndexMismatch, SentenceEncoder, VectorIndex, add_to_index, build_index, search

from .conftest import FIXTURES

CORPUS = FIXTURES / "scifact" / "corpus.jsonl"


def _docs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_search_finds_the_document_itself(tiny_bert_dir, tmp_path):
    index = build_index(tiny_bert_dir, CORPUS, tmp_path / "idx")
    assert len(index) == 42 and index.meta["dim"] == 64
    first = json.loads(CORPUS.read_text().splitlines()[5])
    hits = search(tmp_path / "idx", f"{first['title']} {first['text']}", k=3)
    assert hits[0]["doc_id"] == first["doc_id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_flat_search_equals_brute_force(tiny_bert_dir, tmp_path):
    encoder = SentenceEncoder.load(tiny_bert_dir)
    build_index(encoder, CORPUS, tmp_path / "idx")
    index = VectorIndex.load(tmp_path / "idx")
    docs = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    vectors = encoder.encode([f"{d['title']} {d['text']}" for d in docs])
    query = encoder.encode(["kidney function"])
    order = np.argsort(-(vectors @ query[0]))[:5]
    assert [d for d, _ in index.search(query, 5)[0]] == [docs[i]["doc_id"] for i in order]


def test_incremental_add_and_duplicate_ids(tiny_bert_dir, tmp_path):
    build_index(tiny_bert_dir, CORPUS, tmp_path / "idx")
    new = _docs(tmp_path / "new.jsonl", [{"doc_id": "n1", "text": "zebra stripes and savanna grass"}])
    add_to_index(tmp_path / "idx", new)
    assert len(VectorIndex.load(tmp_path / "idx")) == 43
    assert search(tmp_path / "idx", "zebra stripes and savanna grass", k=1)[0]["doc_id"] == "n1"
    with pytest.raises(DataError, match="'n1' is already in the index"):
        add_to_index(tmp_path / "idx", new)
    assert len(VectorIndex.load(tmp_path / "idx")) == 43  # nothing half-written


def test_hnsw_kind(tiny_bert_dir, tmp_path):
    build_index(tiny_bert_dir, CORPUS, tmp_path / "idx", kind="hnsw")
    assert VectorIndex.load(tmp_path / "idx").meta["kind"] == "hnsw"
    assert len(search(tmp_path / "idx", "protein", k=4)) == 4


def test_empty_corpus_leaves_nothing_behind(tiny_bert_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        build_index(tiny_bert_dir, empty, tmp_path / "idx")
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx*"))


def test_dimension_mismatch_is_a_clear_error(tiny_bert_dir, tmp_path):
    from tuneforge.models.tiny import tiny_bert, tiny_tokenizer

    build_index(tiny_bert_dir, CORPUS, tmp_path / "idx")
    wide = tmp_path / "wide"
    tiny_bert(seed=1, hidden_size=32, intermediate_size=64).save_pretrained(wide)
    tiny_tokenizer().save_pretrained(wide)
    with pytest.raises(IndexMismatch, match="64-d vectors but model .* makes 32-d"):
        search(tmp_path / "idx", "query", model=wide)
    broken = shutil.copytree(tmp_path / "idx", tmp_path / "broken")
    meta = json.loads((broken / "meta.json").read_text())
    (broken / "meta.json").write_text(json.dumps({**meta, "dim": 128}))
    with pytest.raises(IndexMismatch, match="holds 64-d vectors but meta.json says 128-d"):
        VectorIndex.load(broken)
    with pytest.raises(IndexMismatch, match="not a tuneforge index"):
        VectorIndex.load(tmp_path / "wide")


def test_cli_build_add_search(tiny_bert_dir, tmp_path, capsys):
    idx = str(tmp_path / "idx")
    with pytest.raises(SystemExit) as done:
        main(["index", "build", "--model", str(tiny_bert_dir), "--corpus", str(CORPUS), "--out", idx])
    assert done.value.code == 0 and "indexed 42 documents" in capsys.readouterr().out
    new = _docs(tmp_path / "new.jsonl", [{"doc_id": "n1", "title": "Zebras", "text": "stripes"}])
    with pytest.raises(SystemExit):
        main(["index", "add", idx, "--corpus", str(new)])
    assert "now holds 43" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["search", idx, "Zebras stripes", "-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[2] == "n1"
    with pytest.raises(SystemExit) as failed:
        main(["index", "add", idx, "--corpus", str(new)])
    assert failed.value.code == 2 and "already in the index" in capsys.readouterr().err

"""Hard-negative mining and MNRL with extra negative columns."""
import json

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data.beir import load_beir
from tuneforge.errors import DataError
from tuneforge.index import SentenceEncoder, VectorIndex, mine_hard_negatives
from tuneforge.train.api import train
from tuneforge.train.tasks.embed_losses import multiple_negatives_ranking

from .conftest import FIXTURES, embed_config


def test_mnrl_with_negatives_is_cross_entropy_over_positives_then_negatives():
    torch.manual_seed(0)
    q, pos, neg = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 8)  # two negatives per row
    docs = torch.cat([pos, neg])
    total = 0.0
    for i in range(4):
        sims = 20 * F.cosine_similarity(q[i].unsqueeze(0), docs, dim=-1)
        total += -(sims[i] - torch.logsumexp(sims, 0))
    groups = torch.arange(4)
    ours = multiple_negatives_ranking(q, docs, 20.0, groups, torch.cat([groups, torch.arange(4, 12)]))
    assert ours.item() == pytest.approx(float(total), rel=1e-5)


def test_a_negative_that_is_another_rows_positive_is_masked_for_that_row():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # row 0's negative is row 1's positive document
    groups = torch.tensor([0, 1])
    doc_groups = torch.tensor([0, 1, 1, 2])
    masked = multiple_negatives_ranking(q, torch.cat([pos, neg]), 20.0, groups, doc_groups)
    unmasked = multiple_negatives_ranking(q, torch.cat([pos, neg]), 20.0, groups, torch.tensor([0, 1, 3, 2]))
    assert masked.item() < unmasked.item()
    # row 1 must not see its own positive twice; row 0 still sees it as a negative
    sims = 20 * torch.stack([q[0] @ d for d in (pos[0], pos[1], neg[0], neg[1])])
    row0 = -(sims[0] - torch.logsumexp(sims, 0))
    sims1 = 20 * torch.stack([q[1] @ d for d in (pos[0], pos[1], neg[1])])
    row1 = -(sims1[1] - torch.logsumexp(sims1, 0))
    assert masked.item() == pytest.approx(float(row0 + row1), rel=1e-5)


def test_mined_negatives_are_unjudged_and_below_the_skipped_ranks(tiny_bert_dir, tmp_path):
    encoder = SentenceEncoder.load(tiny_bert_dir)
    data = load_beir(FIXTURES / "scifact", "train")
    records = mine_hard_negatives(encoder, FIXTURES / "scifact", "train", num_negatives=2, skip_top=1, depth=6,
                                  index_dir=tmp_path / "idx")
    assert len(records) == sum(1 for docs in data.qrels.values() for s in docs.values() if s > 0)
    by_text = {t: q for q, t in data.queries.items()}
    index = VectorIndex.load(tmp_path / "idx")
    assert len(index) == len(data.corpus)
    for rec in records:
        qid = by_text[rec["anchor"]]
        assert len(rec["negative"]) == 2 and not set(rec["negative_ids"]) & set(data.qrels[qid])
        top = [d for d, _ in index.search(encoder.encode([rec["anchor"]]), 6)[0]]
        assert set(rec["negative_ids"]) <= set(top[1:])
    again = mine_hard_negatives(encoder, FIXTURES / "scifact", "train", num_negatives=2, skip_top=1, depth=6,
                                index_dir=tmp_path / "idx")
    assert again == records  # seeded


def test_training_on_mined_triplets_and_the_cli(tiny_bert_dir, tmp_path, capsys):
    from tuneforge.cli.main import main

    out = tmp_path / "hn.jsonl"
    with pytest.raises(SystemExit) as done:
        main(["mine-negatives", "--model", str(tiny_bert_dir), "--data", str(FIXTURES / "scifact"), "--out", str(out),
              "--skip-top", "1", "--depth", "8"])
    assert done.value.code == 0 and "records" in capsys.readouterr().out
    cfg = embed_config(tiny_bert_dir, tmp_path / "run", method={"name": "full"})
    cfg["data"]["train"] = str(out)
    result = train(cfg, progress=False)
    assert "in_batch_accuracy" in result.eval_metrics and result.train_loss is not None


def test_uneven_negative_counts_name_the_line(tiny_bert_dir, tmp_path):
    rows = [{"anchor": "a", "positive": "b", "negative": ["c"]}, {"anchor": "d", "positive": "e", "negative": ["f", "g"]}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = embed_config(tiny_bert_dir, tmp_path / "run")
    cfg["data"]["train"] = str(path)
    with pytest.raises(DataError) as err:
        train(cfg, progress=False)
    assert "bad.jsonl:2" in str(err.value) and "negative" in str(err.value)
    assert not (tmp_path / "run" / "adapter").exists()


def test_task_mines_its_own_negatives_once_per_run(tiny_bert_dir, tmp_path, capsys):
    cfg = embed_config(tiny_bert_dir, tmp_path / "run", method={"name": "full"})
    cfg["task"].update(hard_negatives=1, negatives_skip_top=1, negatives_depth=6,
                       negatives_index=str(tmp_path / "idx"))
    train(cfg, progress=False)
    mined = list((tmp_path / "run").glob("hard_negatives-*.jsonl"))
    assert len(mined) == 1 and "mined 1 hard negative(s)" in capsys.readouterr().out
    assert (tmp_path / "idx" / "meta.json").exists()  # built there, for the retrieval evaluation to reuse
    rows = [json.loads(line) for line in mined[0].read_text().splitlines()]
    assert all(len(r["negative"]) == 1 for r in rows)
    train(cfg, progress=False)  # same settings: the mined file is reused
    assert "mined" not in capsys.readouterr().out


def test_hard_negatives_need_beir_qrels_and_mnrl(tiny_bert_dir, tmp_path):
    from tuneforge.errors import ConfigError

    cfg = embed_config(tiny_bert_dir, tmp_path / "run", loss="cosent")
    cfg["task"]["hard_negatives"] = 1
    with pytest.raises(ConfigError, match="mnrl"):
        train(cfg, progress=False)
    cfg = embed_config(tiny_bert_dir, tmp_path / "run")
    cfg["task"]["hard_negatives"] = 1
    cfg["data"]["train"] = str(FIXTURES / "stsb_train.jsonl")
    with pytest.raises(ConfigError, match="BEIR qrels"):
        train(cfg, progress=False)

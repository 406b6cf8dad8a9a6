"""Embedding losses against their formulas, the embed task end to end, and the sentence-transformers export."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tuneforge.index import SentenceEncoder
from tuneforge.train.api import train
from tuneforge.train.tasks.embed_losses import angle_similarity, cosent, mean_pool, multiple_negatives_ranking

from .conftest import embed_config


def test_mnrl_equals_cross_entropy_over_scaled_cosines():
    torch.manual_seed(0)
    q, d = torch.randn(5, 8), torch.randn(5, 8)
    total = 0.0
    for i in range(5):
        sims = [20 * F.cosine_similarity(q[i], d[j], dim=0) for j in range(5)]
        total += -(sims[i] - torch.logsumexp(torch.stack(sims), 0))
    assert multiple_negatives_ranking(q, d, 20.0).item() == pytest.approx(float(total), rel=1e-5)


def test_mnrl_does_not_count_a_shared_positive_as_negative():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both rows' positive is the same document
    masked = multiple_negatives_ranking(q, d, 20.0, positive_groups=torch.tensor([0, 0]))
    assert masked.item() == pytest.approx(0.0, abs=1e-6)
    assert multiple_negatives_ranking(q, d, 20.0).item() > 1.0


def test_cosent_matches_pairwise_formula():
    torch.manual_seed(1)
    a, b, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0.1, 0.9, 0.5, 0.5])
    cos = F.cosine_similarity(a, b, dim=-1)
    terms = [20 * (cos[j] - cos[i]) for i in range(4) for j in range(4) if y[i] > y[j]]
    expected = math.log(1 + sum(math.exp(float(t)) for t in terms))
    assert cosent(a, b, y, 20.0).item() == pytest.approx(expected * 4, rel=1e-5)


def _complex_angle(u: torch.Tensor, v: torch.Tensor) -> float:
    """AnglE's similarity written with complex numbers: halves as real and imaginary parts, <z, w> = sum z conj(w)."""
    u, v = u.double(), v.double()
    if u.numel() % 2:
        u, v = torch.cat([u, u.new_zeros(1)]), torch.cat([v, v.new_zeros(1)])
    half = u.numel() // 2
    z, w = torch.complex(u[:half], u[half:]), torch.complex(v[:half], v[half:])
    inner = (z * w.conj()).sum()
    return float(abs(inner.real + inner.imag) / (u.norm() * v.norm()))


@pytest.mark.parametrize("dim", [6, 7])
def test_angle_similarity_matches_the_complex_formula(dim):
    torch.manual_seed(2)
    a, b = torch.randn(5, dim), torch.randn(5, dim)
    got = angle_similarity(a, b)
    for i in range(5):
        # float32 inputs: a dot product of <= 8 terms of order 1 is exact to a few float32 ulps
        assert got[i].item() == pytest.approx(_complex_angle(a[i], b[i]), rel=1e-5, abs=1e-6)
    assert angle_similarity(a, 3 * a).tolist() == pytest.approx([1.0] * 5, rel=1e-5)  # real part = cosine = 1


def test_angle_loss_is_cosent_on_the_angle_similarity():
    torch.manual_seed(3)
    a, b, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0.2, 0.8, 0.4, 0.4])
    sim = [_complex_angle(a[i], b[i]) for i in range(4)]
    terms = [20 * (sim[j] - sim[i]) for i in range(4) for j in range(4) if y[i] > y[j]]
    expected = math.log(1 + sum(math.exp(t) for t in terms))
    assert cosent(a, b, y, 20.0, "angle").item() == pytest.approx(expected * 4, rel=1e-5)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).item() == 2.0


def test_mnrl_on_beir_qrels_exports_a_sentence_transformer(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = train(embed_config(tiny_bert_dir, tmp_path / "run", method={"name": "full"}), progress=False)
    assert set(result.eval_metrics) == {"eval_loss", "in_batch_accuracy"}
    export = tmp_path / "run" / "sentence-transformer"
    assert (export / "modules.json").exists() and (export / "1_Pooling" / "config.json").exists()
    texts = ["a short query", "a much longer document about proteins, cells and the kidney"]
    ours = SentenceEncoder.load(tmp_path / "run").encode(texts)
    theirs = SentenceTransformer(str(export), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_lora_export_is_merged_and_equals_the_adapter(tiny_bert_dir, tmp_path):
    cfg = embed_config(tiny_bert_dir, tmp_path / "run", loss="cosent")
    result = train(cfg, progress=False)
    from scipy.stats import spearmanr

    # the task's validation spearman, recomputed from the saved adapter's embeddings (cut at data.max_length)
    rows = [json.loads(line) for line in open(cfg["data"]["validation"])]
    encoder = SentenceEncoder.load(tmp_path / "run" / "adapter")
    a, b = (encoder.encode([r[key] for r in rows], max_length=64) for key in ("sentence1", "sentence2"))
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    expected = spearmanr(cos, [r["score"] for r in rows]).statistic
    assert result.eval_metrics["spearman"] == pytest.approx(expected, abs=1e-6)
    texts = ["two dogs play", "a man is cooking"]
    merged = SentenceEncoder.load(tmp_path / "run" / "sentence-transformer").encode(texts)
    adapter = SentenceEncoder.load(tmp_path / "run" / "adapter").encode(texts)
    base = SentenceEncoder.load(tiny_bert_dir).encode(texts)
    np.testing.assert_allclose(merged, adapter, atol=1e-5)
    assert not np.allclose(merged, base, atol=1e-4)  # training changed the embeddings
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "run" / "sentence-transformer" / "README.md").data.to_dict()
    assert card["library_name"] == "sentence-transformers" and card["pipeline_tag"] == "sentence-similarity"
    assert card["tuneforge"]["task"] == "embed" and card["tuneforge"]["metrics"]["spearman"] == pytest.approx(
        result.eval_metrics["spearman"]) and card["tuneforge"]["method"]["name"] == "lora"


def test_unmergeable_method_keeps_only_the_adapter(tiny_bert_dir, tmp_path, capsys):
    cfg = embed_config(tiny_bert_dir, tmp_path / "run", method={"name": "prompt_tuning", "num_virtual_tokens": 2})
    train(cfg, progress=False)
    assert not (tmp_path / "run" / "sentence-transformer").exists()
    assert "cannot merge" in capsys.readouterr().out
    vectors = SentenceEncoder.load(tmp_path / "run").encode(["hello"])
    assert vectors.shape == (1, 64)


def test_scored_records_need_numeric_scores(tiny_bert_dir, tmp_path):
    from tuneforge.errors import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": "high"}) + "\n")
    cfg = embed_config(tiny_bert_dir, tmp_path / "run", loss="cosine")
    cfg["data"].update(train=str(bad), validation=None)
    with pytest.raises(DataError, match=r"bad.jsonl:1.*score must be a number"):
        train(cfg, progress=False)


def test_angle_loss_trains_and_is_scored_by_cosine(tiny_bert_dir, tmp_path):
    from scipy.stats import spearmanr

    cfg = embed_config(tiny_bert_dir, tmp_path / "run", loss="angle", method={"name": "full"})
    result = train(cfg, progress=False)
    assert set(result.eval_metrics) == {"eval_loss", "spearman"} and math.isfinite(result.eval_metrics["eval_loss"])
    rows = [json.loads(line) for line in open(cfg["data"]["validation"])]
    encoder = SentenceEncoder.load(tmp_path / "run")
    a, b = (encoder.encode([r[key] for r in rows], max_length=64) for key in ("sentence1", "sentence2"))
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert result.eval_metrics["spearman"] == pytest.approx(spearmanr(cos, [r["score"] for r in rows]).statistic,
                                                            abs=1e-6)
    untouched = SentenceEncoder.load(tiny_bert_dir).encode(["two dogs play"])
    assert not np.allclose(encoder.encode(["two dogs play"]), untouched, atol=1e-4)

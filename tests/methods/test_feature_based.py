"""feature_based: frozen embeddings (pooling, cache) + a scikit-learn classifier stored as safetensors + JSON."""
import json

import pytest
import torch

import tuneforge.methods as M
from tuneforge.errors import AdapterMismatch, ConfigError, DataError
from tuneforge.io import load_adapter
from tuneforge.io.adapter_files import read_adapter_files, write_adapter_files
from tuneforge.methods.feature_based import (FeatureBasedConfig, FeatureClassifier, embed, fit, pool, predict,
                                             predict_proba)
from tuneforge.models.tiny import tiny_bert, tiny_llama, tiny_tokenizer

TEXTS = ["a great film", "wonderful acting", "I loved it", "superb and moving", "a dull mess", "boring plot",
         "I hated it", "awful and slow", "it was fine", "an average day"]
LABELS = ["pos"] * 4 + ["neg"] * 4 + ["meh"] * 2


def test_pool_follows_the_mask_on_either_padding_side():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, left, "mean")[0], hidden[0, 2:].mean(0))
    assert torch.equal(pool(hidden, right, "last")[0], hidden[0, 1])
    assert torch.equal(pool(hidden, left, "last")[0], hidden[0, 3])
    assert torch.equal(pool(hidden, left, "cls")[0], hidden[0, 2])
    assert torch.equal(pool(hidden, right, "cls")[1], hidden[1, 0])


@pytest.mark.parametrize("build,pooling", [(tiny_bert, "mean"), (tiny_bert, "cls"), (tiny_llama, "last"),
                                           (tiny_llama, "mean")])
def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(build, pooling):
    model, tok = build(), tiny_tokenizer()
    cfg = FeatureBasedConfig(pooling=pooling)
    batch = embed(model, tok, TEXTS[:4], cfg)
    assert batch.shape == (4, 64) and torch.allclose(batch.norm(dim=1), torch.ones(4))
    for i, text in enumerate(TEXTS[:4]):
        assert (embed(model, tok, [text], cfg)[0] - batch[i]).abs().max() < 1e-5


def test_mean_pooling_of_bert_is_the_masked_average_of_last_hidden_state():
    model, tok = tiny_bert(), tiny_tokenizer()
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    hidden = model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
    n = enc["attention_mask"][0].sum()
    expected = hidden[0, :n].mean(0)
    got = embed(model, tok, TEXTS[:2], FeatureBasedConfig(normalize=False))[0]
    assert (got - expected).abs().max() < 1e-5


def test_cache_is_reused_and_keyed_by_the_weights(tmp_path, monkeypatch):
    model, tok = tiny_bert(), tiny_tokenizer()
    first = embed(model, tok, TEXTS, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 1

    def no_forward(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(model, "forward", no_forward)
    assert torch.equal(embed(model, tok, TEXTS, cache_dir=tmp_path), first)
    monkeypatch.undo()
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight.add_(torch.randn(64, 128))
    changed = embed(model, tok, TEXTS, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 2
    assert (changed - first).abs().max() > 1e-4


@pytest.mark.parametrize("classifier,labels", [("logistic", LABELS), ("logistic", [y == "pos" for y in LABELS]),
                                               ("mlp", LABELS), ("mlp", [int(y == "pos") for y in LABELS])])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_equals_scikit_learn_and_the_saved_files_predict_the_same(tmp_path, classifier, labels):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    model, tok = tiny_bert(), tiny_tokenizer()
    cfg = FeatureBasedConfig(classifier=classifier, C=10.0, hidden_size=16, max_iter=300)
    clf = fit(model, tok, TEXTS, labels, cache_dir=tmp_path / "cache", cfg=cfg)
    x = embed(model, tok, TEXTS, cfg).numpy()
    if classifier == "logistic":
        ref = LogisticRegression(C=10.0, max_iter=300, random_state=0).fit(x, labels)
    else:
        ref = MLPClassifier(hidden_layer_sizes=(16,), alpha=0.1, max_iter=300, random_state=0).fit(x, labels)
    assert clf.labels == ref.classes_.tolist()
    proba = predict_proba(model, tok, TEXTS, clf)
    assert (proba - torch.tensor(ref.predict_proba(x), dtype=torch.float32)).abs().max() < 1e-5
    assert predict(model, tok, TEXTS, clf) == ref.predict(x).tolist()

    write_adapter_files(tmp_path / "clf", *clf.to_files("tiny-bert"))
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    body = json.loads((tmp_path / "clf" / "adapter_config.json").read_text())
    assert body["peft_type"] == "FEATURE_BASED" and body["labels"] == clf.labels and body["classifier"] == classifier
    again = FeatureClassifier.from_files(*read_adapter_files(tmp_path / "clf"))
    assert again.cfg == clf.cfg and again.labels == clf.labels
    assert (predict_proba(model, tok, TEXTS, again) - proba).abs().max() < 1e-6


def test_the_registry_reaches_fit_and_the_method_refuses_to_be_an_adapter(tmp_path):
    model, tok = tiny_bert(), tiny_tokenizer()
    cfg = M.make_method_config("feature_based", {"C": 5.0})
    method = M.method_for(cfg)
    assert method.kind == "features"
    clf = method.fit(model, tok, TEXTS, LABELS, None, cfg)
    assert method.predict(model, tok, TEXTS[:2], clf) == predict(model, tok, TEXTS[:2], clf)
    with pytest.raises(ConfigError, match="fit\\(model, tokenizer, texts, labels, cache_dir\\)"):
        M.add_adapter(model, "feature_based")
    write_adapter_files(tmp_path, *clf.to_files())
    assert method.from_files(*read_adapter_files(tmp_path)).labels == clf.labels
    with pytest.raises(AdapterMismatch, match="trains no network parameters"):
        load_adapter(model, tmp_path)
    assert M.list_adapters(model) == {}


def test_bad_inputs_name_the_problem():
    model, tok = tiny_bert(), tiny_tokenizer()
    with pytest.raises(DataError, match="labels"):
        fit(model, tok, TEXTS, LABELS[:-1])
    with pytest.raises(DataError, match="two distinct"):
        fit(model, tok, TEXTS[:3], ["x"] * 3)
    for key, value in [("pooling", "max"), ("classifier", "svm"), ("C", 0.0), ("batch_size", 0)]:
        with pytest.raises(ConfigError) as err:
            M.make_method_config("feature_based", {key: value})
        assert err.value.key == key

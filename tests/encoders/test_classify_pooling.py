"""task.pooling: mean classifies the mean of the last hidden states over the real tokens (sentence-transformers
encoders were trained for it), through the model's own head; padding must not change a row's logits."""
import json

import pytest
import torch

from tuneforge.config import config_from_dict
from tuneforge.errors import ConfigError
from tuneforge.train.api import train
from tuneforge.train.tasks.classify import ClassifyConfig, ClassifyTask

from .conftest import classify_config


def test_mean_pooling_is_the_head_of_the_masked_mean(tiny_bert_dir):
    from tuneforge.models import load_model, load_tokenizer

    model = load_model(str(tiny_bert_dir), kind="sequence-classification", num_labels=2).eval()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    task = ClassifyTask()
    task.cfg, task.labels = ClassifyConfig(labels=["a", "b"], pooling="mean"), ["a", "b"]
    examples = task._tokenize([{"text": "short"}, {"text": "a rather longer text to pad the other"}], [0, 1],
                              tokenizer, 48, "train")
    batch = task.collate(examples)
    with torch.no_grad():
        both = task.logits(model, batch)
        for i, ex in enumerate(examples):
            ids = torch.tensor([ex["input_ids"]])
            hidden = model.bert(input_ids=ids).last_hidden_state[0]
            expected = model.classifier(hidden.mean(0))
            # the padded row's masked positions add exact zeros; the GEMM blocking differs with the shape,
            # so the rows agree to float32 rounding (2 layers, width 32), not bit for bit
            torch.testing.assert_close(both[i], expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(both, model(**{k: v for k, v in batch.items() if k != "labels"}).logits)


def test_mean_pooling_trains_a_separable_task(tiny_bert_dir, tmp_path):
    rows = [{"text": f"{w} {'good' if i % 2 else 'bad'} {w}", "label": i % 2} for i, w in enumerate("abcdefgh" * 4)]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = classify_config(tiny_bert_dir, tmp_path / "run", method={"name": "full"}, epochs=6, learning_rate=3e-3)
    cfg["task"]["pooling"] = "mean"
    cfg["data"].update(train=str(path), validation=str(path))
    assert train(cfg, progress=False).eval_metrics["accuracy"] == 1.0
    assert "pooling: mean" in (tmp_path / "run" / "config.yaml").read_text()
    from tuneforge.eval.classification import evaluate_classifier

    assert evaluate_classifier(tmp_path / "run")["accuracy"] == 1.0


def test_unknown_pooling_is_a_config_error(tiny_bert_dir, tmp_path):
    cfg = classify_config(tiny_bert_dir, tmp_path / "run")
    cfg["task"]["pooling"] = "max"
    with pytest.raises(ConfigError, match="pooling must be one of model, mean") as err:
        config_from_dict(cfg)
    assert err.value.key == "task.pooling"

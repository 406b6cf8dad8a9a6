"""The classify task: training end to end (encoder and decoder), the head saved with the adapter, metrics,
evaluation of a saved run, and the errors bad labels give."""
import json

import pytest
import torch

from tuneforge.errors import ConfigError, DataError
from tuneforge.eval.classification import evaluate_classifier
from tuneforge.train.api import train
from tuneforge.train.tasks.classify import ClassifyTask, classification_metrics, label_index

from .conftest import FIXTURES, classify_config


def test_metrics_match_hand_computation():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # per-class F1: class 0 p=1/2 r=1/2 -> 0.5; class 1 p=2/3 r=1 -> 0.8; class 2 -> 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_label_index_accepts_names_and_indices_and_rejects_others():
    labels = ["negative", "positive"]
    assert label_index("positive", labels, "f.jsonl", 3) == 1
    assert label_index(0, labels, "f.jsonl", 3) == 0
    with pytest.raises(DataError, match=r"f.jsonl:7.*'neutral' is not in the declared label set"):
        label_index("neutral", labels, "f.jsonl", 7)
    with pytest.raises(DataError, match="f.jsonl:8"):
        label_index(2, labels, "f.jsonl", 8)


def test_lora_run_saves_head_and_reloaded_run_scores_the_same(tiny_bert_dir, tmp_path):
    result = train(classify_config(tiny_bert_dir, tmp_path / "run"), progress=False)
    metrics = result.eval_metrics
    assert {"accuracy", "macro_f1", "confusion_matrix", "eval_loss"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"])) == 16
    body = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert body["modules_to_save"] == ["classifier"] and body["task_type"] == "SEQ_CLS"
    again = evaluate_classifier(tmp_path / "run")
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert again["labels"] == ["negative", "positive"]


def test_decoder_classifies_by_last_token(tiny_llama_dir, tmp_path):
    cfg = classify_config(tiny_llama_dir, tmp_path / "run", method={"name": "lora", "r": 2})
    result = train(cfg, progress=False)
    matrix = result.eval_metrics["confusion_matrix"]
    correct, total = sum(matrix[i][i] for i in range(len(matrix))), sum(map(sum, matrix))
    assert total == 16 and result.eval_metrics["accuracy"] == correct / total
    assert evaluate_classifier(tmp_path / "run")["accuracy"] == pytest.approx(result.eval_metrics["accuracy"])
    body = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert body["modules_to_save"] == ["score"]


def test_training_improves_over_a_fixed_separable_task(tiny_bert_dir, tmp_path):
    """Two labels told apart by one word: a few epochs of full fine-tuning must learn it."""
    rows = [{"text": f"{w} {'good' if i % 2 else 'bad'} {w}", "label": i % 2} for i, w in enumerate("abcdefgh" * 4)]
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = classify_config(tiny_bert_dir, tmp_path / "run", method={"name": "full"}, epochs=6, learning_rate=3e-3)
    cfg["data"].update(train=str(path), validation=str(path))
    assert train(cfg, progress=False).eval_metrics["accuracy"] == 1.0


def test_inferred_labels_are_recorded_in_the_run_config(tiny_bert_dir, tmp_path):
    cfg = classify_config(tiny_bert_dir, tmp_path / "run", method={"name": "head_only"})
    cfg["task"] = "classify"
    train(cfg, progress=False)
    assert "labels:\n  - '0'\n  - '1'" in (tmp_path / "run" / "config.yaml").read_text()


def test_label_outside_declared_set_names_file_and_line(tiny_bert_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = (FIXTURES / "sst2_train.jsonl").read_text().splitlines()
    lines[4] = json.dumps({"text": "meh", "label": "neutral"})
    bad.write_text("\n".join(lines) + "\n")
    cfg = classify_config(tiny_bert_dir, tmp_path / "run")
    cfg["data"]["train"] = str(bad)
    with pytest.raises(DataError, match=r"bad.jsonl:5.*'neutral'"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written before the data is known to be good


def test_head_size_must_match_label_count(tiny_bert_dir, tmp_path):
    cfg = classify_config(tiny_bert_dir, tmp_path / "run")
    cfg["task"]["labels"] = ["a", "b", "c"]
    with pytest.raises(ConfigError, match="num_labels: 3"):
        train(cfg, progress=False)


def test_text_pairs_are_encoded_as_one_row(tiny_bert_dir):
    from tuneforge.models import load_tokenizer
    from tuneforge.train.tasks.classify import ClassifyConfig

    task = ClassifyTask()
    task.cfg, task.labels = ClassifyConfig(text_field="premise", text_pair_field="hypothesis"), ["0", "1"]
    tok = load_tokenizer(str(tiny_bert_dir))
    examples = task.encode([{"premise": "a b", "hypothesis": "c", "label": 1}], tok, 32)
    batch = task.collate(examples)
    assert batch["labels"].tolist() == [1] and batch["input_ids"].shape == batch["attention_mask"].shape
    assert torch.equal(batch["attention_mask"].sum(), torch.tensor(len(examples[0]["input_ids"])))


def test_cli_classify_eval(tiny_bert_dir, tmp_path, capsys):
    from tuneforge.cli.main import main

    train(classify_config(tiny_bert_dir, tmp_path / "run", method={"name": "head_only"}), progress=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["classify-eval", str(tmp_path / "run"), "--data", str(FIXTURES / "sst2_train.jsonl")])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "accuracy" in out and "confusion_matrix (rows = true label" in out
    assert "num_examples       48" in out


def test_saved_classifier_adapter_loads_in_peft_with_the_same_logits(tiny_bert_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tuneforge.io import load_adapter
    from tuneforge.models import load_model, load_tokenizer

    train(classify_config(tiny_bert_dir, tmp_path / "run", learning_rate=5e-2), progress=False)
    tok = load_tokenizer(str(tiny_bert_dir))
    batch = tok(["a gripping film", "dull"], padding=True, return_tensors="pt")
    ours = load_model(str(tiny_bert_dir), kind="sequence-classification", num_labels=2, device="cpu")
    load_adapter(ours, tmp_path / "run" / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    theirs = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    with torch.no_grad():
        expected = theirs(**batch).logits
        got = ours.eval()(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected, torch.zeros_like(expected))


def test_label_smoothing_trains_on_the_smoothed_target_and_reports_plain_cross_entropy():
    """loss_sum = sum_i (1 - e) * (-log p_i[y_i]) + e * mean_c(-log p_i[c]); eval_loss stays the plain mean CE.
    The task's logits are fp32 and so is torch's loss; the reference reuses those logits in float64, so the two
    differ only by fp32 rounding in log-softmax and a sum of 4 x 3 terms of order 1: a few ulps (1.2e-7 each)."""
    from tuneforge.models.tiny import tiny_bert
    from tuneforge.train.tasks.classify import ClassifyConfig

    e = 0.2
    model = tiny_bert(num_labels=3)
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # confident logits, so the smoothed loss is far from the plain one
    task = ClassifyTask()
    task.cfg, task.labels = ClassifyConfig(label_smoothing=e), ["a", "b", "c"]
    batch = task.collate([{"input_ids": [2, 5, 9, 4][: n], "label": n % 3} for n in (2, 3, 4, 4)])
    with torch.no_grad():
        logp = task.logits(model, batch).double().log_softmax(-1)
        want = sum((1 - e) * -logp[i, y] - e * logp[i].mean() for i, y in enumerate(batch["labels"].tolist()))
        assert float(task.loss_sum(model, batch)) == pytest.approx(float(want), rel=1e-6)
        plain = -logp.gather(1, batch["labels"][:, None]).mean()
        assert task.evaluate(model, [batch])["eval_loss"] == pytest.approx(float(plain), rel=1e-6)
        assert abs(float(want) / 4 - float(plain)) > 0.01  # far above the rounding above
    with pytest.raises(ConfigError, match="label_smoothing"):
        ClassifyConfig(label_smoothing=1.0).validate()

"""Self-training on pseudo-labels (task.self_training): which predictions are kept, the per-round log with the
hidden labels' agreement, restarting from the initial weights, resuming, and the errors bad input gives."""
import json

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, DataError
from tuneforge.train.api import train
from tuneforge.train.pseudo_labels import agreement, class_counts, predict_proba, select

from .conftest import FIXTURES, classify_config

LABELS = ["negative", "positive"]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def st_config(model_dir, out, unlabeled, method=None, **self_training):
    cfg = classify_config(model_dir, out, method=method or {"name": "full"}, learning_rate=3e-3, epochs=2)
    cfg["task"]["self_training"] = {"unlabeled": str(unlabeled), **self_training}
    cfg["data"]["limit_train"] = 12
    return cfg


def test_select_keeps_the_confident_predictions_most_confident_first():
    probs = torch.tensor([[0.95, 0.05], [0.40, 0.60], [0.08, 0.92], [0.97, 0.03], [0.50, 0.50], [0.01, 0.99]])
    assert select(probs, 0.9) == ([0, 2, 3, 5], [0, 1, 0, 1])
    assert select(probs, 0.5) == ([0, 1, 2, 3, 4, 5], [0, 1, 1, 0, 0, 1])  # a tie goes to the first class
    assert select(probs, 0.9, max_count=2) == ([3, 5], [0, 1])  # 0.97 and 0.99
    assert select(probs, 1.0) == ([], [])


def test_balance_keeps_as_many_per_class_as_the_rarest_class_has():
    probs = torch.tensor([[0.95, 0.05], [0.91, 0.09], [0.99, 0.01], [0.08, 0.92], [0.30, 0.70]])
    # above 0.9: class 0 has three (0.95, 0.91, 0.99), class 1 one (0.92): one each, the most confident
    assert select(probs, 0.9, balance=True) == ([2, 3], [0, 1])
    assert select(probs, 0.6, balance=True, max_count=2) == ([2, 3], [0, 1])
    assert select(probs, 0.6, balance=True) == ([0, 2, 3, 4], [0, 0, 1, 1])
    only_one_class = torch.tensor([[0.95, 0.05], [0.97, 0.03]])
    assert select(only_one_class, 0.9, balance=True) == ([], [])


def test_counts_and_agreement_with_hidden_labels():
    assert class_counts([1, 1, 0], LABELS) == {"negative": 1, "positive": 2}
    assert agreement([0, 1, 1, 0], [0, 0, None, 0]) == (2 / 3, 3)
    assert agreement([0, 1], [None, None]) == (None, 0)


def test_predictions_do_not_depend_on_batching(tiny_bert_dir):
    """Batches are built from length-sorted examples and scattered back: batch 1 and batch 5 give the same rows.
    Padding adds masked positions whose attention weight is exactly 0, but the matmuls' blocking changes with
    the shapes, so rows agree to float32 rounding through 2 layers (~1e-6 relative), not bit for bit."""
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.train.tasks.classify import ClassifyConfig, ClassifyTask

    model = load_model(str(tiny_bert_dir), kind="sequence-classification", num_labels=2)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    task = ClassifyTask()
    task.cfg, task.labels = ClassifyConfig(labels=LABELS), LABELS
    texts = ["a", "a much longer sentence than the first one", "mid length text", "b c", "the end of it all"]
    examples = task._tokenize([{"text": t} for t in texts], [-1] * 5, tokenizer, 48, "unlabeled")
    model.train()  # dropout on: predictions must switch it off, and leave the mode as they found it
    one = predict_proba(model, task, examples, 1, progress=False)
    five = predict_proba(model, task, examples, 5, progress=False)
    assert model.training
    torch.testing.assert_close(five, one, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        for ex, row in zip(examples, one):
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            torch.testing.assert_close(row, logits.softmax(-1), rtol=1e-5, atol=1e-6)


def test_rounds_are_logged_with_pseudo_label_counts_and_hidden_accuracy(tiny_bert_dir, tmp_path):
    pool = FIXTURES / "sst2_train.jsonl"
    cfg = st_config(tiny_bert_dir, tmp_path / "run", pool, threshold=0.5, rounds=2, max_per_round=10)
    result = train(cfg, progress=False)
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / "self_training.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log] == [0, 1, 2] and result.self_training == log
    assert log[0]["pseudo_labels"] == 0 and log[0]["examples"] == 12
    texts = [r["text"] for r in _records(pool)]
    hidden = [LABELS[int(r["label"])] for r in _records(pool)]
    for entry in log[1:]:
        r = entry["round"]
        kept = json.loads((out / "rounds" / f"round-{r}" / "pseudo_labels.json").read_text())["kept"]
        # two classes: every prediction is at least 0.5 confident, so the cap decides: the 10 most confident
        assert entry["above_threshold"] == 36 and entry["pseudo_labels"] == len(kept) == 10
        assert entry["examples"] == 12 + 10 and sum(entry["per_class"].values()) == 10
        assert all(conf >= 0.5 for _, _, conf in kept)
        assert entry["pool"] == 48 - 12 and entry["hidden_labels"] == 36
        assert entry["steps"] == 2 * -(-(12 + len(kept)) // 16)
        assert set(entry["eval"]) >= {"accuracy", "macro_f1", "eval_loss"}
    # the agreement with the hidden labels, recomputed from the file: the pool is the file minus the 12 drawn
    from tuneforge.data.formatting import select_records

    drawn = {r["text"] for r in select_records(_records(pool), 12, 0)}
    rest = [(t, h) for t, h in zip(texts, hidden) if t not in drawn]
    kept = json.loads((out / "rounds" / "round-1" / "pseudo_labels.json").read_text())["kept"]
    right = sum(LABELS[y] == rest[i][1] for i, y, _ in kept)
    assert log[1]["pseudo_accuracy"] == pytest.approx(right / len(kept))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["self_training"] == log and summary["steps"] == sum(r["steps"] for r in log)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_round_records_reach_the_trackers(tiny_bert_dir, tmp_path):
    """With report_to: tensorboard, output_dir/tensorboard holds one point per round (step = round) of the
    counts, the hidden labels' agreement and the validation metrics, equal to self_training.jsonl's values
    (event files store float32: one rounding, relative error <= 2^-24); each round's training has its own."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = st_config(tiny_bert_dir, tmp_path / "run", FIXTURES / "sst2_train.jsonl", threshold=0.5, rounds=2,
                    max_per_round=10)
    cfg["train"]["report_to"] = ["tensorboard"]
    result = train(cfg, progress=False)
    out = tmp_path / "run"
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    log = result.self_training
    for tag, key in (("self_training/pseudo_labels", "pseudo_labels"), ("self_training/pool", "pool"),
                     ("self_training/examples", "examples")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(r["round"], r[key]) for r in log]
    # round 0 predicts nothing: the counts of predictions start at round 1
    above = [(e.step, e.value) for e in events.Scalars("self_training/above_threshold")]
    assert above == [(r["round"], r["above_threshold"]) for r in log[1:]]
    agree = [(e.step, e.value) for e in events.Scalars("self_training/pseudo_accuracy")]
    assert agree == [(r["round"], pytest.approx(r["pseudo_accuracy"], rel=2**-23)) for r in log[1:]]
    accuracy = [(e.step, e.value) for e in events.Scalars("self_training/eval/accuracy")]
    assert accuracy == [(r["round"], pytest.approx(r["eval"]["accuracy"], rel=2**-23)) for r in log]
    for r in range(3):
        assert list((out / "rounds" / f"round-{r}" / "tensorboard").glob("events.out.tfevents.*"))


def test_each_round_restarts_from_the_initial_weights(tiny_bert_dir, tmp_path):
    """threshold 1.0 keeps no pseudo-label (a float32 softmax of two finite logits never reaches 1 for this
    tiny model's logit gaps), so round 1 trains on round 0's examples: from the initial weights with the same seed
    it must land on the same weights; continuing from round 0 (reinit: false) must not."""
    pool = FIXTURES / "sst2_validation.jsonl"
    result = train(st_config(tiny_bert_dir, tmp_path / "a", pool, threshold=1.0, rounds=1), progress=False)
    first, second = result.self_training
    assert second["pseudo_labels"] == 0
    assert second["eval"] == first["eval"]
    result = train(st_config(tiny_bert_dir, tmp_path / "b", pool, threshold=1.0, rounds=1, reinit=False),
                   progress=False)
    first, second = result.self_training
    assert second["eval"]["eval_loss"] != first["eval"]["eval_loss"]


def test_more_rounds_resume_the_finished_ones_exactly(tiny_bert_dir, tmp_path):
    pool = FIXTURES / "sst2_validation.jsonl"
    settings = {"threshold": 0.5, "balance": True}
    straight = train(st_config(tiny_bert_dir, tmp_path / "straight", pool, rounds=2, **settings), progress=False)
    for entry in straight.self_training[1:]:
        assert entry["per_class"]["negative"] == entry["per_class"]["positive"]
    train(st_config(tiny_bert_dir, tmp_path / "grown", pool, rounds=1, **settings), progress=False)
    stamp = (tmp_path / "grown" / "rounds" / "round-1" / "pseudo_labels.json").stat().st_mtime_ns
    grown = train(st_config(tiny_bert_dir, tmp_path / "grown", pool, rounds=2, **settings), progress=False)
    assert (tmp_path / "grown" / "rounds" / "round-1" / "pseudo_labels.json").stat().st_mtime_ns == stamp
    assert [r["eval"] for r in grown.self_training] == [r["eval"] for r in straight.self_training]
    assert [r["pseudo_labels"] for r in grown.self_training] == [r["pseudo_labels"] for r in straight.self_training]
    # a change that alters a finished round is refused before anything is written
    with pytest.raises(ConfigError, match="threshold"):
        train(st_config(tiny_bert_dir, tmp_path / "grown", pool, rounds=2, threshold=0.6, balance=True),
              progress=False)


def test_unlabelled_label_outside_the_declared_set_fails_before_training(tiny_bert_dir, tmp_path):
    rows = _records(FIXTURES / "sst2_validation.jsonl")
    rows[3] = {"text": "so so", "label": "neutral"}
    bad = _write(tmp_path / "pool.jsonl", rows)
    with pytest.raises(DataError, match=r"pool.jsonl:4.*label 'neutral', which the task does not declare"):
        train(st_config(tiny_bert_dir, tmp_path / "run", bad), progress=False)
    assert not (tmp_path / "run" / "rounds").exists() and not (tmp_path / "run" / "adapter").exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unlabelled_records_without_labels_are_fine_and_measure_nothing(tiny_bert_dir, tmp_path):
    rows = [{"text": r["text"]} for r in _records(FIXTURES / "sst2_validation.jsonl")]
    pool = _write(tmp_path / "pool.jsonl", rows)
    log = train(st_config(tiny_bert_dir, tmp_path / "run", pool, threshold=0.5, rounds=1), progress=False).self_training
    assert log[1]["hidden_labels"] == 0 and log[1]["pseudo_accuracy"] is None and log[1]["pool"] == 16


def test_empty_unlabelled_file_is_an_error(tiny_bert_dir, tmp_path):
    empty = tmp_path / "pool.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"pool.jsonl.*empty: there is nothing to pseudo-label"):
        train(st_config(tiny_bert_dir, tmp_path / "run", empty), progress=False)
    assert not (tmp_path / "run" / "rounds").exists()


def test_a_pool_of_only_labelled_records_is_an_error(tiny_bert_dir, tmp_path):
    cfg = st_config(tiny_bert_dir, tmp_path / "run", FIXTURES / "sst2_train.jsonl")
    cfg["data"]["limit_train"] = None
    with pytest.raises(DataError, match="all 48 unlabelled records are also labelled training records"):
        train(cfg, progress=False)


def test_config_errors_name_file_line_and_key(tmp_path):
    import yaml

    def write(settings):
        body = {"model": {"name": "all-minilm-l6-v2", "kind": "sequence-classification", "num_labels": 2},
                "task": {"name": "classify", "labels": LABELS, "self_training": settings},
                "data": {"train": str(FIXTURES / "sst2_train.jsonl")}, "output_dir": str(tmp_path / "run")}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    pool = str(FIXTURES / "sst2_train.jsonl")
    for settings, key in [({"unlabeled": pool, "threshold": 1.5}, "task.self_training.threshold"),
                          ({"unlabeled": pool, "rounds": 0}, "task.self_training.rounds"),
                          ({"unlabeled": pool, "balanced": True}, "task.self_training.balanced"),
                          ({"unlabeled": str(tmp_path / "nope.jsonl")}, "task.self_training.unlabeled"),
                          ({"threshold": 0.9}, "task.self_training.unlabeled")]:
        path = write(settings)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key == key and str(path) in str(err.value) and err.value.line is not None, settings
    cfg = load_config(write({"unlabeled": pool, "balance": True}))
    assert cfg.task_config.self_training.balance and cfg.task_config.self_training.threshold == 0.9


def test_pool_limit_is_drawn_after_the_labelled_records_are_left_out(tiny_bert_dir, tmp_path):
    """limit_train and the pool's limit draw with the same seed; drawn from the whole file, the pool's first picks
    would repeat the labelled ones and the pool would shrink to limit - limit_train."""
    cfg = st_config(tiny_bert_dir, tmp_path / "run", FIXTURES / "sst2_train.jsonl", threshold=1.0, rounds=1,
                    limit=30)
    log = train(cfg, progress=False).self_training
    assert log[1]["pool"] == 30 and log[1]["hidden_labels"] == 30


def test_other_settings_reuse_a_finished_supervised_round(tiny_bert_dir, tmp_path):
    """Round 0 trains on the labelled records alone, so a run with other self-training settings may start from a
    copy of a finished round 0 (how benchmarks/selftrain_select.py compares settings at one supervised cost);
    the later rounds still refuse a setting that changes them."""
    import shutil

    pool = FIXTURES / "sst2_validation.jsonl"
    first = train(st_config(tiny_bert_dir, tmp_path / "a", pool, rounds=1, threshold=0.5), progress=False)
    (tmp_path / "b" / "rounds").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "rounds" / "round-0", tmp_path / "b" / "rounds" / "round-0")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "rounds" / "round-0" / "checkpoints").rglob("*")}
    other = train(st_config(tiny_bert_dir, tmp_path / "b", pool, rounds=1, threshold=0.6, max_per_round=4),
                  progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # round 0 was reloaded, not trained again
    assert other.self_training[0]["eval"] == first.self_training[0]["eval"]
    assert other.self_training[1]["pseudo_labels"] <= 4
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert any(line.startswith("task.self_training.threshold") for line in summary["resume_changes"])
    with pytest.raises(ConfigError, match="threshold"):  # round 1 of b was trained under 0.6
        train(st_config(tiny_bert_dir, tmp_path / "b", pool, rounds=1, threshold=0.7, max_per_round=4),
              progress=False)


def test_self_training_rounds_may_take_their_own_number_of_steps(tiny_bert_dir, tmp_path):
    pool = FIXTURES / "sst2_validation.jsonl"
    result = train(st_config(tiny_bert_dir, tmp_path / "run", pool, rounds=2, threshold=0.5, max_steps=3),
                   progress=False)
    assert [r["steps"] for r in result.self_training] == [2 * -(-12 // 16), 3, 3]  # round 0: train.epochs (2)
    with pytest.raises(ConfigError, match="max_steps"):
        train(st_config(tiny_bert_dir, tmp_path / "bad", pool, max_steps=0), progress=False)

"""Knowledge distillation into a classifier (task.distill): the crops, the soft-target loss, the teachers' mean
probabilities, the cache a resumed run and sibling seeds reuse, and the errors bad settings give."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.train import distill
from tuneforge.train.api import train
from tuneforge.train.distill import CACHE, distill_targets, soft_cross_entropy_sum, word_crops
from tuneforge.train.distill_config import DistillConfig
from tuneforge.train.tasks.classify import ClassifyTask

from .conftest import FIXTURES, classify_config

LABELS = ["negative", "positive"]


def test_crops_are_distinct_shorter_word_spans_of_their_text():
    texts = ["a b c d e f g", "one two three", "x y z w", "a b c d e f g h"]
    crops, sources = word_crops(texts, per_record=6, min_words=3, seed=0)
    assert (crops, sources) == word_crops(texts, per_record=6, min_words=3, seed=0)  # a function of the seed
    assert crops != word_crops(texts, per_record=6, min_words=3, seed=1)[0]
    assert len(set(crops)) == len(crops) and not set(crops) & set(texts)
    assert 1 not in sources  # three words: no span of 3..2 words
    for crop, source in zip(crops, sources):
        words, whole = crop.split(), texts[source].split()
        assert 3 <= len(words) < len(whole)
        assert any(whole[i:i + len(words)] == words for i in range(len(whole)))  # contiguous
    assert word_crops(["a b c"], per_record=4, min_words=3, seed=0) == ([], [])


def test_soft_cross_entropy_is_the_cross_entropy_for_one_hot_targets_and_scales_by_t_squared():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1, 0])
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(soft_cross_entropy_sum(logits, one_hot, 1.0), F.cross_entropy(logits, labels,
                                                                                            reduction="sum"))
    targets = torch.softmax(torch.randn(5, 3), -1)
    expected = -(targets * torch.log_softmax(logits / 2.0, -1)).sum() * 4.0
    torch.testing.assert_close(soft_cross_entropy_sum(logits, targets, 2.0), expected)
    # the gradient of the soft cross-entropy at T = 1: softmax(z) - p, per row
    soft_cross_entropy_sum(logits, targets, 1.0).backward()
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), -1) - targets)


def test_a_mixed_batch_adds_gold_cross_entropy_and_soft_cross_entropy(tiny_bert_dir):
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.train.tasks.classify import ClassifyConfig

    model = load_model(str(tiny_bert_dir), kind="sequence-classification", num_labels=2).eval()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    task = ClassifyTask()
    task.cfg = ClassifyConfig(labels=LABELS, label_smoothing=0.1,
                              distill=DistillConfig(teachers=["t"], temperature=2.0))
    task.labels = LABELS
    gold = task._tokenize([{"text": "good film"}, {"text": "bad plot here"}], [1, 0], tokenizer, 48, "train")
    crops = task._tokenize([{"text": "plot here"}, {"text": "good"}], [0, 1], tokenizer, 48, "distill")
    crops[0]["soft"], crops[1]["soft"] = [0.7, 0.3], [0.2, 0.8]
    batch = task.collate([gold[0], crops[0], gold[1], crops[1]])
    assert batch["soft_rows"].tolist() == [False, True, False, True]
    with torch.no_grad():
        logits = task.logits(model, batch)
        expected = (F.cross_entropy(logits[[0, 2]], torch.tensor([1, 0]), reduction="sum", label_smoothing=0.1)
                    - (torch.tensor([[0.7, 0.3], [0.2, 0.8]]) * torch.log_softmax(logits[[1, 3]] / 2, -1)).sum() * 4)
        torch.testing.assert_close(task.loss_sum(model, batch), expected)
        plain = task.collate(gold)  # a batch without crops: the plain (smoothed) cross-entropy
        assert "soft_rows" not in plain
        torch.testing.assert_close(task.loss_sum(model, plain), F.cross_entropy(
            task.logits(model, plain), plain["labels"], reduction="sum", label_smoothing=0.1))


def _teacher(tiny_bert_dir, out, seed, labels=LABELS):
    cfg = classify_config(tiny_bert_dir, out, method={"name": "full"}, seed=seed)
    cfg["task"]["labels"] = labels
    train(cfg, progress=False)
    return out


def test_distilled_run_trains_on_crops_labelled_by_the_teachers_mean(tiny_bert_dir, tmp_path, monkeypatch):
    from tuneforge.eval.classification import classifier_predictions

    teachers = [_teacher(tiny_bert_dir, tmp_path / f"teacher-{s}", s) for s in (1, 2)]
    cfg = classify_config(tiny_bert_dir, tmp_path / "student" / "seed-1", method={"name": "full"})
    cfg["task"]["distill"] = {"teachers": [str(t) for t in teachers], "crops_per_record": 2}
    result = train(cfg, progress=False)
    texts = [r["text"] for r in map(__import__("json").loads, (FIXTURES / "sst2_train.jsonl").read_text().splitlines())]
    crops, _ = word_crops(texts, 2, 3, 0)
    assert result.data_report["distill"]["records"] == len(crops) > 0
    assert result.data_report["train"]["records"] == len(texts)
    saved = torch.load(tmp_path / "student" / "seed-1" / CACHE, weights_only=True)
    assert saved["crops"] == crops
    # the targets are the mean of each teacher's own softmax over the crops (each loaded as it was trained)
    mean = sum(torch.tensor(_probs(t, crops)) for t in teachers) / 2
    torch.testing.assert_close(saved["probs"], mean, rtol=1e-5, atol=1e-6)
    assert classifier_predictions(tmp_path / "student" / "seed-1")["num_examples"] == 16

    # a teacher trained again into its folder makes its labelling stale: a new seed labels it (and only it) anew
    calls = []
    real = distill._one_teacher
    monkeypatch.setattr(distill, "_one_teacher", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    settings = load_config(tmp_path / "student" / "seed-1" / "config.yaml").task_config.distill
    distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-0", progress=False)
    assert calls == []  # the same teachers: seed-1's labelling is reused
    adapter_file = next(f for f in (teachers[0] / "adapter").iterdir() if f.is_file())
    os.utime(adapter_file, ns=(adapter_file.stat().st_atime_ns, adapter_file.stat().st_mtime_ns + 10**9))
    shutil.rmtree(tmp_path / "student" / "seed-0")
    distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-0", progress=False)
    assert calls == [str(teachers[0])]
    # weights change the mean, not the labellings: nothing is labelled again
    settings.teacher_weights = [3.0, 1.0]
    _, weighted = distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-0",
                                  progress=False)
    first, second = (torch.tensor(_probs(t, crops)) for t in teachers)
    torch.testing.assert_close(weighted, 0.75 * first + 0.25 * second, rtol=1e-5, atol=1e-6)
    assert calls == [str(teachers[0])]
    # a teacher added to the labelled ones is the only one that labels
    third = _teacher(tiny_bert_dir, tmp_path / "teacher-3", 3)
    settings.teachers, settings.teacher_weights = [str(t) for t in teachers] + [str(third)], None
    _, three = distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-0",
                               progress=False)
    assert calls == [str(teachers[0]), str(third)]
    torch.testing.assert_close(three, (first + second + torch.tensor(_probs(third, crops))) / 3, rtol=1e-5,
                               atol=1e-6)
    shutil.rmtree(tmp_path / "student" / "seed-0")

    # a sibling seed of a --seeds run reuses the labelling: with the teachers gone it still gets the same targets
    for t in teachers:
        shutil.move(t, t.with_name(t.name + "-moved"))
    settings = load_config(tmp_path / "student" / "seed-1" / "config.yaml").task_config.distill
    crops2, probs2 = distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-2",
                                     progress=False)
    assert crops2 == crops and torch.equal(probs2, saved["probs"])
    assert (tmp_path / "student" / "seed-2" / CACHE).is_file()
    # changed settings label anew, which needs the teachers: a clear error, nothing else written
    settings.temperature = 2.0
    with pytest.raises(ConfigError, match="teacher .* is not a finished run folder") as err:
        distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-3", progress=False)
    assert err.value.key == "task.distill.teachers"
    assert not (tmp_path / "student" / "seed-3").exists()
    # a student evaluates after its teachers are gone (they are checked when labelling, not when loading)
    assert classifier_predictions(tmp_path / "student" / "seed-1")["num_examples"] == 16


def _probs(teacher, crops):
    from tuneforge.io import load_adapter
    from tuneforge.models import load_model_for, load_tokenizer

    cfg = load_config(teacher / "config.yaml")
    model = load_model_for(cfg.model)
    load_adapter(model, teacher / "adapter")
    tokenizer = load_tokenizer(cfg.model.name)
    model.eval()
    with torch.no_grad():
        return [model(**tokenizer(c, truncation=True, max_length=48, return_tensors="pt")).logits[0].softmax(-1)
                .tolist() for c in crops]


def test_a_teacher_with_other_labels_is_refused_before_training(tiny_bert_dir, tmp_path):
    teacher = _teacher(tiny_bert_dir, tmp_path / "teacher", 1, labels=["positive", "negative"])
    cfg = classify_config(tiny_bert_dir, tmp_path / "student", method={"name": "full"})
    cfg["task"]["distill"] = {"teachers": [str(teacher)]}
    with pytest.raises(ConfigError, match=r"labels \['positive', 'negative'\], the student \['negative', 'positive'\]"):
        train(cfg, progress=False)
    assert not (tmp_path / "student" / "metrics.jsonl").exists()


def test_config_errors_name_file_line_and_key(tmp_path):
    import yaml

    def write(task_extra):
        body = {"model": {"name": "all-minilm-l6-v2", "kind": "sequence-classification", "num_labels": 2},
                "task": {"name": "classify", "labels": LABELS, **task_extra},
                "data": {"train": str(FIXTURES / "sst2_train.jsonl")}, "output_dir": str(tmp_path / "run")}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    pool = str(FIXTURES / "sst2_train.jsonl")
    for extra, key in [({"distill": {"teachers": []}}, "task.distill.teachers"),
                       ({"distill": {"teachers": ["t"], "temperature": 0}}, "task.distill.temperature"),
                       ({"distill": {"teachers": ["t"], "crops_per_record": 0}}, "task.distill.crops_per_record"),
                       ({"distill": {"teachers": ["t"], "crops": 4}}, "task.distill.crops"),
                       ({"distill": {"crops_per_record": 4}}, "task.distill.teachers"),
                       ({"distill": {"teachers": "runs/one"}}, "task.distill.teachers"),  # a list, even of one
                       ({"distill": {"teachers": ["t", "u"], "teacher_weights": [1]}},
                        "task.distill.teacher_weights"),
                       ({"distill": {"teachers": ["t"], "teacher_weights": [-1]}}, "task.distill.teacher_weights"),
                       ({"distill": {"teachers": ["t"], "teacher_weights": [0]}}, "task.distill.teacher_weights"),
                       ({"distill": {"teachers": ["t"]}, "self_training": {"unlabeled": pool}}, "task.distill"),
                       ({"distill": {"teachers": ["t"]}, "text_pair_field": "b"}, "task.distill")]:
        path = write(extra)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key == key and str(path) in str(err.value) and err.value.line is not None, extra
    cfg = load_config(write({"distill": {"teachers": ["runs/one"]}}))
    assert cfg.task_config.distill.crops_per_record == 8 and cfg.task_config.distill.temperature == 1.0


def test_a_cache_written_before_per_teacher_labellings_is_still_read(tmp_path):
    """Runs of sessions 17-19 cached only the teachers' mean: a resumed run or a new seed beside them reuses it."""
    texts = ["a fine and moving film", "a dull , lifeless plot", "good acting , bad script overall"]
    settings = DistillConfig(teachers=[str(tmp_path / "gone-1"), str(tmp_path / "gone-2")], crops_per_record=2)
    crops, _ = word_crops(texts, 2, 3, 0)
    probs = torch.softmax(torch.randn(len(crops), 2), -1)
    (tmp_path / "student" / "seed-1").mkdir(parents=True)
    torch.save({"key": distill._old_fingerprint(settings, texts), "crops": crops, "probs": probs,
                "stamps": [None, None]}, tmp_path / "student" / "seed-1" / CACHE)
    got_crops, got = distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-2",
                                     progress=False)
    assert got_crops == crops and torch.equal(got, probs)
    settings.teacher_weights = [1.0, 2.0]  # a weighted mean cannot come from an equal-weight one: label anew
    with pytest.raises(ConfigError, match="is not a finished run folder"):
        distill_targets(ClassifyTask, settings, texts, LABELS, tmp_path / "student" / "seed-3", progress=False)

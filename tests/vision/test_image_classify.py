"""The image_classify task end to end on tiny random ViT / ResNet models: every method that makes sense trains
through the shared method contract and a reloaded run scores the same, the three data sources give the same
examples, augmentation, a new head for a new label set, the exported model folder, and the bad-input errors."""
import json

import pytest
import torch

from tuneforge.errors import ConfigError, DataError
from tuneforge.eval.classification import evaluate_classifier
from tuneforge.train.api import resolve_config, train
from tuneforge.train.tasks.image_classify import ImageClassifyTask, random_resized_crop

from .conftest import CLASSES, image_config, image_folder, write_image


def test_vit_lora_run_saves_head_and_reloaded_run_scores_the_same(vit_dir, folders, tmp_path):
    train_dir, val_dir = folders
    result = train(image_config(vit_dir, train_dir, val_dir, tmp_path / "run"), progress=False)
    metrics = result.eval_metrics
    assert {"accuracy", "macro_f1", "confusion_matrix", "eval_loss"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"])) == 9
    body = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert body["modules_to_save"] == ["classifier"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in saved if ".lora_" in k}
    assert adapted == {"q_proj", "v_proj"}  # the ViT default: attention query and value
    again = evaluate_classifier(tmp_path / "run")
    assert again["labels"] == list(CLASSES) and again["num_examples"] == 9
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


METHODS = [
    ("resnet", {"name": "full"}),
    ("resnet", {"name": "head_only"}),
    ("resnet", {"name": "last_k", "k": 1}),
    ("resnet", {"name": "lora", "r": 2, "target_modules": ["convolution"]}),  # every Conv2d
    ("resnet", {"name": "bitfit"}),
    ("resnet", {"name": "ia3", "target_modules": ["convolution"], "feedforward_modules": []}),
    ("vit", {"name": "dora", "r": 2}),
    ("vit", {"name": "last_k", "k": 1}),
    ("vit", {"name": "selective", "trainable_patterns": [r".*layernorm.*"]}),
]


def _params(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("arch,method", METHODS, ids=[f"{a}-{m['name']}" for a, m in METHODS])
def test_method_trains_and_reloaded_run_scores_the_same(arch, method, vit_dir, resnet_dir, folders, tmp_path):
    """Unchanged methods through the shared contract; BatchNorm statistics of trained layers are saved with the
    adapter and frozen ones are not updated, so the reloaded run's loss equals the one measured in training."""
    from tuneforge.models import load_model

    model_dir = resnet_dir if arch == "resnet" else vit_dir
    cfg = image_config(model_dir, *folders, tmp_path / "run", method=method, max_steps=2)
    info = train(cfg, dry_run=True)
    result = train(cfg, progress=False)
    assert torch.isfinite(torch.tensor(result.train_loss))
    again = evaluate_classifier(tmp_path / "run")
    assert again["eval_loss"] == pytest.approx(result.eval_metrics["eval_loss"], rel=1e-5)
    base = load_model(model_dir, kind="image-classification", num_labels=3)
    total = sum(p.numel() for p in base.parameters())
    if method["name"] == "head_only":
        assert info["trainable"] == _params(base, "classifier") == 3 * (16 + 1)
    if method["name"] == "last_k" and arch == "resnet":  # the last stage (of two) and the head
        assert info["trainable"] == _params(base, "resnet.encoder.stages.1") + _params(base, "classifier")
    if method["name"] == "full":
        assert info["trainable"] == total


def test_head_only_keeps_the_backbone_and_its_norm_statistics(resnet_dir, folders, tmp_path):
    from tuneforge.models import load_model

    cfg = image_config(resnet_dir, *folders, tmp_path / "run", method={"name": "head_only"}, max_steps=3)
    train(cfg, progress=False)
    state = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert state["peft_type"] == "HEAD_ONLY"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert sorted(saved) == ["base_model.model.classifier.1.bias", "base_model.model.classifier.1.weight"]
    base = load_model(resnet_dir, kind="image-classification", num_labels=3)
    assert float(base.resnet.embedder.embedder.normalization.running_var.sum()) == 8.0  # untouched: ones


def test_full_fine_tuning_learns_colour_classes(resnet_dir, folders, tmp_path):
    cfg = image_config(resnet_dir, *folders, tmp_path / "run", method={"name": "full"}, epochs=10,
                       learning_rate=3e-3)
    assert train(cfg, progress=False).eval_metrics["accuracy"] == 1.0


def _prepared(model_dir, train_source, tmp_path, task=None):
    cfg = resolve_config(image_config(model_dir, train_source, None, tmp_path / "unused", task=task))
    task_obj = ImageClassifyTask()
    examples, _ = task_obj.prepare(cfg, task_obj.load_preprocessor(cfg))
    return examples, task_obj.labels


def test_jsonl_csv_and_datasets_sources_equal_the_image_folder(vit_dir, tmp_path):
    import datasets

    root = image_folder(tmp_path / "images", 2)
    rows = [{"image": f"images/{name}/{i}.png", "label": name} for name in CLASSES for i in range(2)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "data.csv").write_text("image,label\n" + "".join(f"{r['image']},{r['label']}\n" for r in rows))
    ds = datasets.Dataset.from_dict({"img": [str(tmp_path / r["image"]) for r in rows],
                                     "label": [r["label"] for r in rows]}).cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    folder, labels = _prepared(vit_dir, root, tmp_path)
    assert labels == list(CLASSES)
    for source, task in ((tmp_path / "data.jsonl", None), (tmp_path / "data.csv", None),
                         (tmp_path / "saved", {"image_field": "img"})):
        examples, labels = _prepared(vit_dir, source, tmp_path, task)
        assert labels == list(CLASSES)
        assert [e["label"] for e in examples] == [e["label"] for e in folder]
        for a, b in zip(examples, folder):
            assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_default_preprocessing_resizes_and_normalises(vit_dir, tmp_path):
    """No processor in the folder: resize to the config's 16x16, pixels (x / 255 - 0.5) / 0.5."""
    from PIL import Image

    from tuneforge.models.vision import load_image_preprocessor

    pre = load_image_preprocessor(vit_dir)
    assert pre.processor is None and pre.size == (16, 16)
    flat = Image.new("RGB", (5, 7), (255, 0, 51))
    x = pre(flat)
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]), atol=1e-6)


def test_augmentation_is_training_only_and_keeps_the_shape(vit_dir, folders, tmp_path):
    task = ImageClassifyTask()
    cfg = resolve_config(image_config(vit_dir, *folders, tmp_path / "unused",
                                      task={"random_resized_crop": True, "horizontal_flip": True}))
    train_examples, eval_examples = task.prepare(cfg, task.load_preprocessor(cfg))
    assert all(e["augment"] for e in train_examples) and not any(e["augment"] for e in eval_examples)
    torch.manual_seed(0)
    batch = task.collate(eval_examples)
    assert torch.equal(batch["pixel_values"], torch.stack([e["pixel_values"] for e in eval_examples]))
    augmented = task.collate(train_examples)["pixel_values"]
    assert augmented.shape == (18, 3, 16, 16)
    assert not torch.equal(augmented, torch.stack([e["pixel_values"] for e in train_examples]))


def test_random_resized_crop_of_the_whole_image_is_the_identity_and_flip_mirrors():
    x = torch.randn(3, 10, 12)
    assert torch.equal(random_resized_crop(x, [1.0, 1.0], [1.2, 1.2]), x)  # 12/10: the whole image
    task = ImageClassifyTask()
    task.cfg.horizontal_flip = True
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        y = task.augment(x)
        assert torch.equal(y, x) or torch.equal(y, x.flip(-1))
        seen.add(torch.equal(y, x))
    assert seen == {True, False}


def test_new_label_names_get_a_new_head_and_the_same_ones_keep_it(tmp_path):
    from tuneforge.models.tiny import tiny_resnet
    from tuneforge.models.vision import set_labels

    model = tiny_resnet(num_labels=3)
    model.config.id2label = {0: "a", 1: "b", 2: "c"}
    before = model.classifier[1].weight.detach().clone()
    assert not set_labels(model, ["a", "b", "c"])
    assert torch.equal(model.classifier[1].weight, before)
    assert set_labels(model, ["x", "y", "z"])
    assert not torch.equal(model.classifier[1].weight, before)
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}


def test_exported_model_folder_is_the_trained_model(resnet_dir, folders, tmp_path):
    from tuneforge.models import load_model
    from tuneforge.models.vision import load_image_preprocessor

    cfg = image_config(resnet_dir, *folders, tmp_path / "run", method={"name": "last_k", "k": 1}, max_steps=2,
                       task={"export_model": True})
    result = train(cfg, progress=False)
    exported = tmp_path / "run" / "model"
    assert (exported / "preprocessor_config.json").is_file()
    model = load_model(exported, kind="image-classification")
    assert model.config.id2label == dict(enumerate(CLASSES))
    again = evaluate_classifier(tmp_path / "run")
    assert again["eval_loss"] == pytest.approx(result.eval_metrics["eval_loss"], rel=1e-5)
    pre = load_image_preprocessor(exported)
    task = ImageClassifyTask()
    task.labels = list(CLASSES)
    records, source = task.read(resolve_config(cfg), "validation")
    examples = task.encode(records, pre, source, "validation")
    with torch.no_grad():
        logits = task.logits(model, task.collate(examples))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([e["label"] for e in examples]))
    assert float(loss) == pytest.approx(result.eval_metrics["eval_loss"], rel=1e-5)


# --- bad input: clear errors before training, nothing written -----------------------------------------------

def _fails_before_writing(cfg, tmp_path, match):
    with pytest.raises((DataError, ConfigError), match=match):
        train(cfg, progress=False)
    out = tmp_path / "run"
    assert not (out / "config.yaml").exists() and not (out / "adapter").exists()


def test_corrupt_and_truncated_images_are_named(vit_dir, folders, tmp_path):
    train_dir, val_dir = folders
    (train_dir / "dog" / "bad.png").write_bytes(b"this is not a png")
    _fails_before_writing(image_config(vit_dir, train_dir, val_dir, tmp_path / "run"), tmp_path,
                          r"cannot read image .*dog/bad\.png")
    (train_dir / "dog" / "bad.png").unlink()
    good = (val_dir / "owl" / "0.png").read_bytes()
    (val_dir / "owl" / "0.png").write_bytes(good[: len(good) // 2])
    _fails_before_writing(image_config(vit_dir, train_dir, val_dir, tmp_path / "run"), tmp_path,
                          r"cannot read image .*owl/0\.png")


def test_empty_label_folder_is_an_error(vit_dir, folders, tmp_path):
    train_dir, val_dir = folders
    (train_dir / "emu").mkdir()
    (train_dir / "emu" / "notes.txt").write_text("no images here")
    _fails_before_writing(image_config(vit_dir, train_dir, val_dir, tmp_path / "run"), tmp_path,
                          r"label folder 'emu' holds no images")


def test_labels_not_declared_are_errors(vit_dir, folders, tmp_path):
    train_dir, val_dir = folders
    write_image(val_dir / "emu" / "0.png", 0, 5)
    cfg = image_config(vit_dir, train_dir, val_dir, tmp_path / "run", task={"labels": list(CLASSES)})
    _fails_before_writing(cfg, tmp_path, r"emu/0\.png.*'emu' is not in the declared label set")
    rows = [{"image": str(train_dir / "cat" / "0.png"), "label": "cat"},
            {"image": str(train_dir / "dog" / "0.png"), "label": "dingo"}]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = image_config(vit_dir, train_dir, tmp_path / "val.jsonl", tmp_path / "run", task={"labels": list(CLASSES)})
    _fails_before_writing(cfg, tmp_path, r"val\.jsonl:2.*'dingo' is not in the declared label set")


def test_missing_image_in_a_file_names_file_and_line(vit_dir, folders, tmp_path):
    rows = [{"image": "train/cat/0.png", "label": "cat"}, {"image": "train/cat/99.png", "label": "dog"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = image_config(vit_dir, tmp_path / "train.jsonl", None, tmp_path / "run", task={"labels": list(CLASSES)})
    _fails_before_writing(cfg, tmp_path, r"train\.jsonl:2.*image .*99\.png not found")


def test_mixed_sizes_the_processor_keeps_are_an_error(resnet_dir, tmp_path):
    """A processor that does not resize passes sizes through: images of two sizes cannot form one batch."""
    import shutil

    model_dir = tmp_path / "no-resize"
    shutil.copytree(resnet_dir, model_dir)
    body = json.loads((model_dir / "preprocessor_config.json").read_text())
    (model_dir / "preprocessor_config.json").write_text(json.dumps({**body, "do_resize": False}))
    train_dir = image_folder(tmp_path / "train", 2, sizes=((12, 12), (12, 14)))
    cfg = image_config(model_dir, train_dir, None, tmp_path / "run", method={"name": "head_only"})
    _fails_before_writing(cfg, tmp_path,
                          r"image .*cat/1\.png becomes \(3, 12, 14\) after preprocessing.*cat/0\.png became")


def test_head_size_must_match_the_labels(vit_dir, folders, tmp_path):
    cfg = image_config(vit_dir, *folders, tmp_path / "run")
    cfg["model"]["num_labels"] = 2
    _fails_before_writing(cfg, tmp_path, r"3 labels .* 2 outputs; set model.num_labels: 3")

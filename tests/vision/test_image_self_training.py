"""Self-training on an image folder through the same loop as text (train/self_training.py): the pool's class
folders are hidden labels that only measure the pseudo-labels, and a class the task does not declare is an error
naming the image before anything trains."""
import json

import pytest

from tuneforge.errors import DataError
from tuneforge.train.api import train

from .conftest import CLASSES, image_config, image_folder, write_image


def test_image_pool_is_pseudo_labelled_and_measured(vit_dir, folders, tmp_path):
    pool = image_folder(tmp_path / "pool", 4, seed=2)
    task = {"labels": list(CLASSES), "self_training": {"unlabeled": str(pool), "threshold": 0.34, "rounds": 1}}
    result = train(image_config(vit_dir, *folders, tmp_path / "run", task=task, max_steps=2), progress=False)
    first, second = result.self_training
    assert first["pseudo_labels"] == 0 and second["pool"] == 12 and second["hidden_labels"] == 12
    # three classes: the top probability is always above 1/3, so every pool image is kept
    kept = json.loads((tmp_path / "run" / "rounds" / "round-1" / "pseudo_labels.json").read_text())["kept"]
    assert second["pseudo_labels"] == len(kept) == 12 and second["examples"] == 18 + 12
    truth = [k for k in range(3) for _ in range(4)]  # the pool's order: class folders sorted, then images
    assert second["pseudo_accuracy"] == pytest.approx(sum(y == truth[i] for i, y, _ in kept) / 12)
    assert sum(second["per_class"].values()) == 12 and set(second["per_class"]) == set(CLASSES)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_pool_class_the_task_does_not_declare_fails_before_training(vit_dir, folders, tmp_path):
    pool = image_folder(tmp_path / "pool", 2, seed=2)
    write_image(pool / "fox" / "0.png", 0, 7)
    task = {"labels": list(CLASSES), "self_training": {"unlabeled": str(pool)}}
    with pytest.raises(DataError, match=r"fox.*0\.png.*label 'fox', which the task does not declare"):
        train(image_config(vit_dir, *folders, tmp_path / "run", task=task, max_steps=2), progress=False)
    assert not (tmp_path / "run" / "rounds").exists() and not (tmp_path / "run" / "adapter").exists()

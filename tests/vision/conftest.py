"""Shared set-up for the vision tests: tiny random ViT / ResNet model folders (saved once per session, so the real
loaders are exercised) and small image folders whose classes differ by colour, written in each test's tmp dir."""
from pathlib import Path

import numpy as np
import pytest
import torch

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory):
    """A tiny ViT (16x16 inputs) without an image processor: the default resize + normalise applies."""
    from tuneforge.models.tiny import tiny_vit

    path = tmp_path_factory.mktemp("tiny-vit")
    tiny_vit(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory):
    """A tiny ResNet with its own image processor (resize to 16x16)."""
    from tuneforge.models.tiny import tiny_resnet
    from tuneforge.models.vision import write_processor

    path = tmp_path_factory.mktemp("tiny-resnet")
    tiny_resnet(seed=0).save_pretrained(path)
    write_processor(path, 16, 3)
    return path


def write_image(path: Path, k: int, seed: int, size=(12, 12)) -> None:
    """An RGB image whose channel k is bright: a class told apart by colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (*size, 3)).astype("uint8")
    pixels[..., k] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def image_folder(root: Path, per_class: int, seed: int = 0, sizes=((12, 12),)) -> Path:
    """root/<class>/<i>.png for the three colour classes; image i has size sizes[i % len(sizes)]."""
    for k, name in enumerate(CLASSES):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", k, seed * 1000 + k * 100 + i, sizes[i % len(sizes)])
    return root


@pytest.fixture
def folders(tmp_path):
    return image_folder(tmp_path / "train", 6), image_folder(tmp_path / "validation", 3, seed=1)


def image_config(model_dir, train, validation, out, method=None, task=None, **train_cfg):
    return {
        "model": {"name": str(model_dir), "kind": "image-classification", "num_labels": 3},
        "method": method or {"name": "lora", "r": 4},
        "task": {"name": "image_classify", **(task or {})},
        "data": {"train": str(train), "validation": str(validation) if validation else None},
        "train": {"epochs": 1, "micro_batch_size": 6, "learning_rate": 1e-2, **train_cfg},
        "output_dir": str(out),
    }

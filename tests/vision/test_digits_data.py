"""The offline transfer demonstration's data: scikit-learn's digits written as image folders (pretraining, the
labelled pool, the tuning part, the held-out test part; the rotated 20-class pretraining), and
task.train_per_class, the seeded few-labels-per-class draw a learning curve trains on."""
import numpy as np
import pytest
from PIL import Image

from tuneforge.errors import ConfigError, DataError
from tuneforge.train.api import resolve_config
from tuneforge.train.tasks.image_classify import ImageClassifyTask

from .conftest import CLASSES, image_config, image_folder


def _names(folder):
    return {p.name for p in folder.iterdir()}


def test_digits_splits_are_disjoint_and_sized(tmp_path):
    from sklearn.datasets import load_digits

    from tuneforge.data.digits import write_digits

    out = write_digits(tmp_path / "digits", per_class=3, tune_per_class=2, rotations=True)
    target = load_digits().target
    for digit in range(5, 10):
        parts = [_names(out / "transfer" / part / str(digit)) for part in ("train", "tune", "test")]
        assert [len(p) for p in parts[:2]] == [3, 2]
        assert sum(len(p) for p in parts) == int((target == digit).sum())  # every image, each in one part
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(_names(out / "pretrain-rot" / "train")) == 20  # (digit, turn) classes
    assert _names(out / "pretrain" / "train") == {"0", "1", "2", "3", "4"}
    images = load_digits().images
    for turn in (0, 1, 2, 3):
        folder = out / "pretrain-rot" / "validation" / f"3-r{90 * turn}"
        name = sorted(_names(folder))[0]
        pixels = np.asarray(Image.open(folder / name))
        expected = np.rot90((images[int(name[:4])] * (255 / 16)).round().astype("uint8"), turn)
        assert np.array_equal(pixels, expected)
        assert _names(folder) == _names(out / "pretrain" / "validation" / "3")
    # the other folders do not depend on the rotations
    plain = write_digits(tmp_path / "plain", per_class=3, tune_per_class=2)
    assert not (plain / "pretrain-rot").exists()
    for part in ("pretrain/train", "transfer/train", "transfer/tune", "transfer/test"):
        assert _names(plain / part / "2" if "pretrain" in part else plain / part / "7") == \
            _names(out / part / "2" if "pretrain" in part else out / part / "7")


def test_digits_refuses_more_labels_than_a_digit_has(tmp_path):
    from tuneforge.data.digits import write_digits

    with pytest.raises(ConfigError, match="per_class"):
        write_digits(tmp_path / "digits", per_class=150, tune_per_class=50)
    assert not (tmp_path / "digits").exists()


def _drawn(model_dir, train, tmp_path, per_class, seed):
    cfg = resolve_config(image_config(model_dir, train, None, tmp_path / "unused",
                                      task={"train_per_class": per_class}, seed=seed))
    task = ImageClassifyTask()
    task.resolve_labels(cfg)
    records, _ = task._train_records
    return [(r["label"], r["image"]) for r in records]


def test_train_per_class_draws_that_many_of_each_class_with_the_seed(vit_dir, tmp_path):
    train = image_folder(tmp_path / "train", 6)
    first = _drawn(vit_dir, train, tmp_path, 2, seed=0)
    assert sorted(label for label, _ in first) == sorted(CLASSES * 2)
    assert first == _drawn(vit_dir, train, tmp_path, 2, seed=0)
    others = [_drawn(vit_dir, train, tmp_path, 2, seed=s) for s in (1, 2, 3)]
    assert any(o != first for o in others)  # 15^3 draws per seed: three seeds agreeing would be a broken seed
    assert len(_drawn(vit_dir, train, tmp_path, 6, seed=0)) == 18  # every image


def test_train_per_class_errors(vit_dir, tmp_path):
    train = image_folder(tmp_path / "train", 2)
    with pytest.raises(DataError, match="fewer than task.train_per_class 3"):
        _drawn(vit_dir, train, tmp_path, 3, seed=0)
    with pytest.raises(ConfigError, match="train_per_class"):
        _drawn(vit_dir, train, tmp_path, 0, seed=0)

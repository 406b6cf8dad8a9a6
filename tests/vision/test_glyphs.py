"""The synthetic letters of the transfer demonstration (data/glyphs.py): the image format of the UCI digits
(8x8 counts of a 32x32 bitmap's 4x4 blocks), the folder layout, determinism, and the errors bad settings give;
`tuneforge data glyphs`, `data digits --pretrain/--transfer` and `init-model --labels-from`."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tuneforge.cli.main import app, register_verbs
from tuneforge.data.glyphs import FONTS, LETTERS, class_name, write_glyphs
from tuneforge.errors import ConfigError

FEW_FONTS = (FONTS[0], FONTS[8], FONTS[16])  # a sans, a serif and a Computer Modern face


def _pixels(folder):
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_glyphs_are_block_counts_in_class_folders(tmp_path):
    out = write_glyphs(tmp_path / "g", per_class=3, validation_per_class=2, letters="Ab", fonts=FEW_FONTS)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["lower-b", "upper-A"]
    assert (out / "LICENSE.txt").is_file()
    images = _pixels(out)
    assert len(images) == 2 * (3 + 2)
    for name, pixels in images.items():
        assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
        counts = pixels * (16 / 255)  # stored as count x 255/16, rounded: the count comes back exactly
        assert np.allclose(counts, counts.round(), atol=16 / 255 / 2) and counts.max() <= 16
        assert pixels.any(), name  # every image shows its letter
    assert class_name("a") != class_name("A")  # distinct folders on a case-insensitive file system too


def test_glyphs_are_deterministic_for_a_seed(tmp_path):
    first = _pixels(write_glyphs(tmp_path / "a", per_class=2, validation_per_class=1, letters="Kq", fonts=FEW_FONTS))
    again = _pixels(write_glyphs(tmp_path / "b", per_class=2, validation_per_class=1, letters="Kq", fonts=FEW_FONTS))
    other = _pixels(write_glyphs(tmp_path / "c", per_class=2, validation_per_class=1, letters="Kq", fonts=FEW_FONTS,
                                 seed=1))
    assert first.keys() == again.keys() == other.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("kwargs, key", [({"letters": "A1"}, "letters"), ({"letters": "AA"}, "letters"),
                                         ({"per_class": 0}, "per_class"), ({"fonts": ("NoSuchFont.ttf",)}, "fonts")])
def test_bad_settings_write_nothing(tmp_path, kwargs, key):
    with pytest.raises(ConfigError) as err:
        write_glyphs(tmp_path / "g", **{"per_class": 1, "validation_per_class": 1, "letters": "AB", **kwargs})
    assert err.value.key == key
    assert not (tmp_path / "g").exists() and list(tmp_path.iterdir()) == []


def test_cli_writes_glyphs_all_ten_digits_and_a_model_labelled_from_a_folder(tmp_path):
    register_verbs(app)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "glyphs", str(tmp_path / "g"), "--per-class", "1", "--validation-per-class",
                                 "1"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "g" / "train").iterdir())) == len(LETTERS) == 42
    result = runner.invoke(app, ["data", "digits", str(tmp_path / "d"), "--pretrain", "", "--transfer",
                                 "0,1,2,3,4,5,6,7,8,9", "--per-class", "2", "--tune-per-class", "1"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "d" / "pretrain").exists()
    assert sorted(p.name for p in (tmp_path / "d" / "transfer" / "test").iterdir()) == [str(d) for d in range(10)]
    assert runner.invoke(app, ["data", "digits", str(tmp_path / "e"), "--pretrain", "x"]).exit_code != 0
    folder = tmp_path / "letters"
    for name in ("upper-B", "lower-a", "upper-A"):
        (folder / name).mkdir(parents=True)
    result = runner.invoke(app, ["init-model", str(tmp_path / "m"), "--labels-from", str(folder), "--seed", "0"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(3)] == ["lower-a", "upper-A", "upper-B"]
    both = runner.invoke(app, ["init-model", str(tmp_path / "n"), "--labels", "a,b", "--labels-from", str(folder)])
    assert both.exit_code != 0 and not (tmp_path / "n").exists()

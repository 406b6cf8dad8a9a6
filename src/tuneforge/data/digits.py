"""scikit-learn's bundled handwritten digits as image folders, for an offline transfer-learning demonstration.

The data: `sklearn.datasets.load_digits()`, 1,797 grey 8x8 images of the digits 0-9 (pixel values 0-16),
shipped inside scikit-learn (BSD-3-Clause). They are the test part of the UCI "Optical Recognition of
Handwritten Digits" data set (Alpaydin and Kaynak, 1998; https://doi.org/10.24432/C50P49), licensed CC BY 4.0.

`write_digits(out)` writes, as PNGs scaled to 0-255 (named by their index in load_digits):
    pretrain/{train,validation}/<digit>/   the pretraining label set (0-4): every image, split 85 / 15
    transfer/train/<digit>/                 the transfer label set (5-9): `per_class` images per digit, the
                                            labelled pool a run draws its few labels from (task.train_per_class)
    transfer/tune/<digit>/                  `tune_per_class` images per digit: where learning rates are chosen
    transfer/test/<digit>/                  every other image of 5-9: the held-out evaluation, never tuned on
With `rotations`, also a richer pretraining task:
    pretrain-rot/{train,validation}/<digit>-r<angle>/   every 0-4 image of pretrain/ at 0, 90, 180 and 270
                                                        degrees, each (digit, turn) its own class (20 classes)
so the network must learn stroke features that tell orientation apart instead of only what separates five
digits; the rotations of one image stay in its split. The other folders are the same with or without it.
The splits are seeded; the folder appears whole or not at all (written beside it, then renamed).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .whole_folder import whole_folder

LICENSE_TEXT = """Images from scikit-learn's bundled digits data (sklearn.datasets.load_digits), written by
`tuneforge data digits`. scikit-learn is BSD-3-Clause licensed. The images are the test part of the UCI
"Optical Recognition of Handwritten Digits" data set (E. Alpaydin, C. Kaynak, 1998,
https://doi.org/10.24432/C50P49), licensed under Creative Commons Attribution 4.0 (CC BY 4.0).
"""


def write_digits(out_dir, pretrain=(0, 1, 2, 3, 4), transfer=(5, 6, 7, 8, 9), per_class: int = 20,
                 tune_per_class: int = 20, seed: int = 0, validation_share: float = 0.15,
                 rotations: bool = False) -> Path:
    """Write the pretraining and few-label transfer image folders (see the module docstring); returns out_dir."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pretrain, transfer = [int(d) for d in pretrain], [int(d) for d in transfer]
    if set(pretrain) & set(transfer) or not set(pretrain + transfer) <= set(range(10)):
        raise ConfigError("pretrain and transfer must be disjoint sets of digits 0-9", key="transfer")
    if per_class < 1 or tune_per_class < 1 or not 0 < validation_share < 1:
        raise ConfigError("per_class and tune_per_class must be >= 1 and validation_share in (0, 1)",
                          key="per_class")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    with whole_folder(out_dir) as tmp:
        for digit in pretrain + transfer:
            index = rng.permutation(np.flatnonzero(digits.target == digit))
            if digit in pretrain:
                cut = int(round(len(index) * (1 - validation_share)))
                parts = {"pretrain/train": index[:cut], "pretrain/validation": index[cut:]}
            else:
                cut = per_class + tune_per_class
                if cut >= len(index):
                    raise ConfigError(f"digit {digit} has only {len(index)} images; per_class + tune_per_class "
                                      "must be smaller", key="per_class")
                parts = {"transfer/train": index[:per_class], "transfer/tune": index[per_class:cut],
                         "transfer/test": index[cut:]}
            if rotations and digit in pretrain:
                parts.update({"pretrain-rot/train": parts["pretrain/train"],
                              "pretrain-rot/validation": parts["pretrain/validation"]})
            for part, rows in parts.items():
                for turn in (0, 1, 2, 3) if part.startswith("pretrain-rot") else (None,):
                    folder = tmp / part / (str(digit) if turn is None else f"{digit}-r{90 * turn}")
                    folder.mkdir(parents=True, exist_ok=True)
                    for row in rows:
                        pixels = (digits.images[row] * (255 / 16)).round().astype("uint8")
                        pixels = pixels if turn is None else np.ascontiguousarray(np.rot90(pixels, turn))
                        Image.fromarray(pixels, mode="L").save(folder / f"{int(row):04d}.png")
        (tmp / "LICENSE.txt").write_text(LICENSE_TEXT)
    return Path(out_dir)

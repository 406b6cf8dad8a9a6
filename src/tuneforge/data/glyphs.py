"""Synthetic letters rendered from fonts, in the format of scikit-learn's digits: a broad pretraining source.

The transfer demonstration needs a source task broader than its target, and no image data set that is broad
enough ships in a package here. So this draws one: letters rendered from the fonts matplotlib ships (DejaVu
Sans / Sans Mono / Serif in every weight and slant, STIX General, Computer Modern; all under free licenses, see
LICENSE.txt written beside the images), each with a random affine distortion and stroke width, then reduced
exactly the way the UCI optical digits were made: a 32x32 bitmap of the character fitted in its box, divided
into 4x4 blocks, each pixel of the 8x8 image the count of "on" pixels in its block (0-16, stored x 255/16 as
PNG, like `tuneforge data digits`). So the source shares the target's image format but neither its label set
(no digits) nor its domain (printed type, not handwriting).

`write_glyphs(out)` writes `{train,validation}/<class>/NNNNN.png`; class names are `upper-A` / `lower-a` (folder
names that differ on case-insensitive file systems). Lower-case letters whose shape equals their capital once
fitted in the box (c o s u v w x z) and `l` (a bar like `I`) are left out: 42 classes. Deterministic for a seed
and the fonts' files; the folder appears whole or not at all.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .whole_folder import whole_folder

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijkmnqrty"
# Latin text fonts in matplotlib's mpl-data/fonts/ttf (the Display and symbol faces hold no letters).
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
         "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
         "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
         "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf")

LICENSE_TEXT = """Synthetic images written by `tuneforge data glyphs`: letters rendered from the fonts that ship with
matplotlib (mpl-data/fonts/ttf), randomly distorted and reduced to 8x8 block counts. The fonts' licenses:
DejaVu fonts (Bitstream Vera license, public-domain changes; mpl-data/fonts/ttf/LICENSE_DEJAVU), STIX fonts (SIL
Open Font License 1.1; mpl-data/fonts/ttf/LICENSE_STIX), Computer Modern (BaKoMa TrueType versions, freely
redistributable; LICENSE/LICENSE_BAKOMA in matplotlib's source). The images are generated data rendered with the
fonts (the fonts themselves are not copied).
"""


def class_name(char: str) -> str:
    return f"upper-{char}" if char.isupper() else f"lower-{char}"


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render_glyph(font, char: str, rng) -> "np.ndarray":  # noqa: F821 (numpy is imported where it is needed)
    """One distorted 8x8 image of `char` (uint8, values k * 255/16 for a count k of 0-16)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    canvas = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(canvas).text((64, 48), char, font=font, fill=255)
    # affine distortion about the centre: rotation, shear, horizontal stretch (inverse map, as PIL wants it)
    angle = np.deg2rad(rng.uniform(-12.0, 12.0))
    shear, stretch = rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.2)
    forward = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ \
        np.array([[stretch, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre = np.array([128.0, 128.0])
    offset = centre - inverse @ centre
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE,
                              (*inverse[0], offset[0], *inverse[1], offset[1]), resample=Image.Resampling.BILINEAR)
    box = canvas.getbbox()
    if box is None:
        raise ConfigError(f"the font {font.path} draws nothing for {char!r}", key="fonts")
    glyph = canvas.crop(box)
    # fit in the 32x32 box (the longer side fills a random 85-100% of it), near its centre
    side = 32.0 * rng.uniform(0.85, 1.0)
    scale = side / max(glyph.size)
    size = (max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale)))
    glyph = glyph.resize(size, Image.Resampling.LANCZOS)
    bitmap = Image.new("L", (32, 32), 0)
    left, top = (32 - size[0]) // 2 + int(rng.integers(-2, 3)), (32 - size[1]) // 2 + int(rng.integers(-2, 3))
    bitmap.paste(glyph, (min(max(left, 0), 32 - size[0]), min(max(top, 0), 32 - size[1])))
    # stroke width: a random binarisation threshold, then 0-2 dilations (handwritten strokes are thick)
    binary = bitmap.point(lambda v, t=int(rng.uniform(60, 170)): 255 if v >= t else 0)
    for _ in range(int(rng.choice(3, p=(0.3, 0.5, 0.2)))):
        binary = binary.filter(ImageFilter.MaxFilter(3))
    counts = (np.asarray(binary) > 0).reshape(8, 4, 8, 4).sum(axis=(1, 3))
    return (counts * (255 / 16)).round().astype("uint8")


def write_glyphs(out_dir, per_class: int = 300, validation_per_class: int = 40, seed: int = 0,
                 letters: str = LETTERS, fonts=FONTS) -> Path:
    """Write the synthetic letters (see the module docstring); returns out_dir."""
    import numpy as np
    from PIL import Image, ImageFont

    if per_class < 1 or validation_per_class < 1:
        raise ConfigError("per_class and validation_per_class must be >= 1", key="per_class")
    if not letters or len(set(letters)) != len(letters) or not all(c.isascii() and c.isalpha() for c in letters):
        raise ConfigError(f"letters must be distinct ASCII letters, got {letters!r}", key="letters")
    folder = _font_dir()
    missing = [name for name in fonts if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"fonts not found in {folder}: {', '.join(missing)}", key="fonts")
    loaded = [ImageFont.truetype(str(folder / name), 96) for name in fonts]
    rng = np.random.default_rng(seed)
    with whole_folder(out_dir) as tmp:
        for char in letters:
            for part, count in (("train", per_class), ("validation", validation_per_class)):
                target = tmp / part / class_name(char)
                target.mkdir(parents=True)
                for i in range(count):
                    font = loaded[int(rng.integers(len(loaded)))]
                    Image.fromarray(render_glyph(font, char, rng), mode="L").save(target / f"{i:05d}.png")
        (tmp / "LICENSE.txt").write_text(LICENSE_TEXT)
    return Path(out_dir)

"""Image classification: cross-entropy of a vision model's classifier head (ViT, ResNet, ConvNeXt... loaded with
`model.kind: image-classification`).

    loss_sum = sum_i -log softmax(head(f(augment(preprocess(x_i)))))[y_i]

Data (data/images.py): an image folder (`<label>/*.png`), a JSONL/CSV/JSON/parquet file of {image: path, label}
(paths relative to the file), or a `datasets` image column. Every image is read, decoded and preprocessed in
`prepare`, before the output directory is written, so a corrupt image, a label outside the declared set, an
empty class folder or images the preprocessing leaves at different sizes stop the run with the path named.
Preprocessing is the model folder's own image processor, else resize + normalise (models/vision.py).

Augmentation (training rows only, drawn from torch's seeded generator, so a resumed run draws the same):
`random_resized_crop` takes a crop of a random share of the area (`crop_scale`) and aspect ratio (`crop_ratio`,
log-uniform) and resizes it back to the input size (bilinear), as torchvision's RandomResizedCrop does;
`horizontal_flip` mirrors half the images. Both act on the normalised tensor, which is the same as acting on
the image first: the per-channel normalisation is affine, and flips and bilinear resizing are linear maps that
keep constants.

BatchNorm: a layer whose parameters train (full, last_k's stages, BitFit's biases) updates its running statistics
and they are saved with the adapter; a frozen one (head_only, LoRA, IA3...) runs in eval mode, keeping the
checkpoint's statistics, so what was trained is exactly what is saved.

The head: a model whose stored label names differ from the task's (a transfer to another label set) gets a new
random head (`configure_model`); a head of another size is replaced when the model is loaded. Whatever method
adapts the backbone, the head trains and is saved with the adapter (`configure_method`, as classify does).
Metrics: accuracy, macro-F1, confusion matrix (see classify.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, DataError
from ...registry import TASKS
from ..self_training_config import SelfTrainingConfig
from .base import BaseTask, batch_context
from .classify import classification_metrics, infer_labels, label_index


@dataclasses.dataclass
class ImageClassifyConfig:
    image_field: str = "image"
    """Record field holding the image (a path relative to the data file, or a datasets image); image folders
    need no field names."""

    label_field: str = "label"
    """Record field holding the label: a label name, or an integer index into `labels`."""

    labels: Union[list[str], None] = None
    """The declared label set, in head-output order. None: the distinct training labels, sorted (an image
    folder's class folder names). A record whose label is outside the set is an error naming its file and line."""

    train_per_class: Union[int, None] = None
    """Train on this many images of each class, drawn from data.train with `train.seed` (so each seed of a
    comparison draws its own few labels, the same ones for every method of that seed); None: every image. A
    class with fewer images is an error. The few-label regime of a learning curve (docs/vision.md)."""

    image_size: Union[int, None] = None
    """Side of the square input of the default preprocessing (a model folder without an image processor);
    None: the model config's image_size, else 224."""

    random_resized_crop: bool = False
    """Augment training images with a random crop resized back to the input size."""

    crop_scale: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0])
    """[min, max] share of the image area a random crop covers."""

    crop_ratio: list[float] = dataclasses.field(default_factory=lambda: [3 / 4, 4 / 3])
    """[min, max] aspect ratio (width / height) of a random crop, drawn log-uniformly."""

    horizontal_flip: bool = False
    """Augment training images by mirroring half of them left to right."""

    export_model: bool = False
    """Also write `model/` in the output directory: the adapter merged into the base, with the config (label
    names) and image processor, a plain transformers model folder another run can start from (pretraining)."""

    self_training: Union[SelfTrainingConfig, None] = None
    """Self-training on pseudo-labels of unlabelled images (`{unlabeled: FOLDER or FILE, threshold, rounds,
    balance, ...}`): an image folder's class names, or a file's label field, are hidden labels that only measure
    the pseudo-labels; see docs/self_training.md."""

    def validate(self) -> None:
        if self.labels is not None:
            if not isinstance(self.labels, list) or len(self.labels) < 2:
                raise ConfigError("labels must be a list of at least two label names", key="labels")
            if len(set(map(str, self.labels))) != len(self.labels):
                raise ConfigError("labels must not repeat", key="labels")
        if self.train_per_class is not None and (isinstance(self.train_per_class, bool)
                                                 or not isinstance(self.train_per_class, int)
                                                 or self.train_per_class < 1):
            raise ConfigError("train_per_class must be a positive number of images", key="train_per_class")
        if self.image_size is not None and (isinstance(self.image_size, bool) or self.image_size < 1):
            raise ConfigError("image_size must be a positive number of pixels", key="image_size")
        for key, low in (("crop_scale", 0.0), ("crop_ratio", 0.0)):
            pair = getattr(self, key)
            if not (isinstance(pair, list) and len(pair) == 2 and low < pair[0] <= pair[1]):
                raise ConfigError(f"{key} must be [min, max] with 0 < min <= max", key=key)
        if self.crop_scale[1] > 1.0:
            raise ConfigError("crop_scale must not exceed 1 (the whole image)", key="crop_scale")


def random_resized_crop(x: torch.Tensor, scale, ratio) -> torch.Tensor:
    """A crop of a random share of the area and aspect ratio of one (C, H, W) tensor, resized back to (H, W);
    torchvision's algorithm (10 tries, then the central crop of the nearest allowed ratio)."""
    _, height, width = x.shape
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand(())))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(torch.rand(())))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            break
    else:
        in_ratio = width / height
        w, h = ((width, round(width / ratio[1])) if in_ratio > ratio[1] else
                (round(height * ratio[0]), height) if in_ratio < ratio[0] else (width, height))
        top, left = (height - h) // 2, (width - w) // 2
    crop = x[:, top:top + h, left:left + w]
    return F.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def per_class_draw(records: list, per_class: int, seed: int, source=None) -> list:
    """`per_class` records of every label, a seeded random draw (random.Random(seed)), kept in file order."""
    import random

    by_label: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_label.setdefault(str(record["label"]), []).append(i)
    rng, keep = random.Random(seed), []
    for label in sorted(by_label):
        rows = by_label[label]
        if len(rows) < per_class:
            raise DataError(f"label {label!r} has {len(rows)} training images, fewer than task.train_per_class "
                            f"{per_class}", file=source, key="train_per_class")
        keep += rng.sample(rows, per_class)
    return [records[i] for i in sorted(keep)]


def freeze_norm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm with no trainable parameter in eval mode: a frozen layer normalises with its
    checkpoint's running statistics instead of updating them from the training batches, since only the
    statistics of a BatchNorm that trains are saved with an adapter (methods/subset.py: norm_statistics)."""
    for module in model.modules():
        if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
                and not any(p.requires_grad for p in module.parameters(recurse=False))):
            module.eval()


@TASKS.register("image_classify")
class ImageClassifyTask(BaseTask):
    """Image classification with a transformers (or timm) vision model."""

    name = "image_classify"
    self_trains = True
    config_class = ImageClassifyConfig

    def __init__(self):
        self.cfg = ImageClassifyConfig()
        self.labels: list[str] = []
        self.report: dict = {}
        self._train_records = None
        self.last_predictions: tuple[list[int], list[int]] = ([], [])

    # --- hooks train() calls -------------------------------------------------------------------------------
    def load_preprocessor(self, run_cfg):
        """What `prepare` gets instead of a tokenizer: the model's image preprocessing."""
        from ...models.vision import load_image_preprocessor

        cfg = run_cfg.task_config or ImageClassifyConfig()
        return load_image_preprocessor(run_cfg.model.name, cfg.image_size)

    def configure_model(self, model, run_cfg) -> None:
        """Check the head's size against the label set and name its outputs; a head trained for other label
        names is re-initialised (models/vision.py: set_labels)."""
        from ...models.vision import set_labels

        labels = self.resolve_labels(run_cfg)
        outputs = int(getattr(model.config, "num_labels", 0) or 0)
        if outputs != len(labels):
            raise ConfigError(f"the task has {len(labels)} labels {labels}, but the model head has {outputs} "
                              f"outputs; set model.num_labels: {len(labels)}", key="model.num_labels")
        if set_labels(model, labels):
            print(f"new classifier head: the model's head was trained for other labels than {labels}")

    def configure_method(self, method_cfg, model):
        """Train and save the new head with the adapter: fill an empty `modules_to_save` with the head's name."""
        from ...models.vision import head_module

        found = head_module(model)
        if found is not None and method_cfg.can_save_modules() and method_cfg.modules_to_save is None:
            return method_cfg.replace(modules_to_save=[found[0]])
        return method_cfg

    def export(self, model, preprocessor, run_cfg, output_dir):
        """With export_model: `model/`, the merged model + its image processor, written atomically; else None."""
        from pathlib import Path

        from ...io import atomic_dir
        from ...methods import unload
        from ...models.vision import write_processor

        if not self.cfg.export_model:
            return None
        merged = unload(model, merge=True)
        out = Path(output_dir) / "model"
        with atomic_dir(out) as tmp:
            merged.save_pretrained(tmp)
            if preprocessor.processor is not None:
                preprocessor.processor.save_pretrained(tmp)
            else:
                write_processor(tmp, preprocessor.size[0], preprocessor.channels)
        return out

    # --- data ----------------------------------------------------------------------------------------------
    def read(self, run_cfg, split: str, path=None):
        from ...data.images import image_records

        data, cfg = run_cfg.data, run_cfg.task_config or ImageClassifyConfig()
        path = path or (data.train if split == "train" else data.validation)
        limit = data.limit_train if split == "train" else data.limit_eval
        return image_records(path, cfg.image_field, cfg.label_field,
                             split=data.split if split == "train" else data.validation_split,
                             revision=data.revision, limit=limit, seed=data.shuffle_seed)

    def resolve_labels(self, run_cfg) -> list[str]:
        """The declared labels, else the sorted distinct training labels; recorded in the run config."""
        cfg = run_cfg.task_config or ImageClassifyConfig()
        if run_cfg.data.train is None:
            raise ConfigError("image classification needs training data", key="data.train")
        if self._train_records is None:
            records, source = self.read(run_cfg, "train")
            if cfg.train_per_class is not None:
                records = per_class_draw(records, cfg.train_per_class, run_cfg.train.seed, source)
            self._train_records = records, source
        self.labels = [str(x) for x in cfg.labels] if cfg.labels else infer_labels(self._train_records[0], "label")
        self.cfg = dataclasses.replace(cfg, labels=list(self.labels))
        run_cfg.task_config = self.cfg  # config.yaml says what each head output means
        return self.labels

    def encode(self, records: list, preprocessor, source=None, split: str = "train", labels=None) -> list[dict]:
        """Records -> {"pixel_values", "label", "augment"}: every label checked (or given: `labels`), every image
        decoded and preprocessed; images that come out at different sizes are an error naming both."""
        from ...data.images import image_name, open_image
        from ...data.readers import line_of

        out, first = [], None
        for i, record in enumerate(records):
            line = line_of(record, i) if getattr(record, "line", None) is not None else None
            label = labels[i] if labels is not None else label_index(
                record["label"], self.labels, source if line is not None else image_name(record["image"]), line)
            pixels = preprocessor(open_image(record["image"], source if line is not None else None, line))
            if first is None:
                first = (tuple(pixels.shape), image_name(record["image"]))
            elif tuple(pixels.shape) != first[0]:
                raise DataError(f"image {image_name(record['image'])} becomes {tuple(pixels.shape)} after "
                                f"preprocessing ({preprocessor.describe()}), but {first[1]} became {first[0]}; "
                                "images of one batch must share a size: use a processor that resizes, or set "
                                "task.image_size", file=source if line is not None else None, line=line,
                                key="image")
            out.append({"pixel_values": pixels, "label": label, "augment": split == "train"})
        self.report[split] = {"records": len(records), "examples": len(out), "dropped": 0, "truncated": 0}
        return out

    def prepare(self, run_cfg, preprocessor) -> tuple[list, list]:
        self.labels = self.resolve_labels(run_cfg)
        self.report = {}
        records, source = self._train_records
        train = self.encode(records, preprocessor, source, "train")
        evals = []
        if run_cfg.data.validation is not None:
            records, source = self.read(run_cfg, "validation")
            evals = self.encode(records, preprocessor, source, "validation")
            if evals and evals[0]["pixel_values"].shape != train[0]["pixel_values"].shape:
                raise DataError(f"validation images become {tuple(evals[0]['pixel_values'].shape)} after "
                                f"preprocessing, training images {tuple(train[0]['pixel_values'].shape)}",
                                file=source, key="image")
        self._train_records = None
        return train, evals

    # --- self-training (train/self_training.py) ------------------------------------------------------------
    def read_unlabeled(self, run_cfg, st):
        """The pool: an image folder (its class folders are hidden labels) or a file of {image[, label]}."""
        from ...data.images import image_records

        cfg = self.cfg
        return image_records(st.unlabeled, cfg.image_field, cfg.label_field, split=st.split,
                             revision=run_cfg.data.revision, labelled=False)

    def encode_unlabeled(self, records: list, preprocessor, run_cfg, source=None):
        """(examples with label -1 and no augmentation, hidden label ids or None); a hidden label outside the
        task's label set is an error naming the record, before anything trains."""
        from ...data.images import image_name
        from ...data.readers import line_of

        hidden: list[int | None] = []
        for i, record in enumerate(records):
            value = record.get("label")
            if value is None or value == "":
                hidden.append(None)
                continue
            line = line_of(record, i) if getattr(record, "line", None) is not None else None
            where = source if line is not None else image_name(record["image"])
            try:
                hidden.append(label_index(value, self.labels, where, line))
            except DataError:
                raise DataError(f"the unlabelled record carries label {value!r}, which the task does not declare "
                                f"(labels: {self.labels}); remove the labels, or declare it in task.labels",
                                file=where, line=line, key="label") from None
        return self.encode(records, preprocessor, source, "unlabeled", labels=[-1] * len(records)), hidden

    def pseudo_example(self, example: dict, label: int) -> dict:
        """A pseudo-labelled image trains like a labelled one: augmented."""
        return {**example, "label": label, "augment": True}

    def example_key(self, example: dict) -> bytes:
        """The preprocessed pixels: pool images equal to a labelled one are left out."""
        import hashlib

        return hashlib.sha1(example["pixel_values"].float().numpy().tobytes()).digest()

    def data_report(self) -> dict:
        """Images read per split (none is dropped or cut; an unreadable one is an error)."""
        return dict(self.report)

    # --- batches -------------------------------------------------------------------------------------------
    def augment(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.random_resized_crop:
            x = random_resized_crop(x, cfg.crop_scale, cfg.crop_ratio)
        if cfg.horizontal_flip and float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        return x

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pixels = [self.augment(ex["pixel_values"]) if ex.get("augment") else ex["pixel_values"] for ex in examples]
        return {"pixel_values": torch.stack(pixels), "labels": torch.tensor([ex["label"] for ex in examples])}

    def num_targets(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    def num_tokens(self, batch: dict) -> int:
        """Images, for the loop's throughput figure (reported as tokens/s)."""
        return int(batch["labels"].shape[0])

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        pixels = batch["pixel_values"].to(next(model.parameters()).dtype)
        out = model(pixels)  # transformers: pixel_values is the first argument; timm: the only one
        return (out.logits if hasattr(out, "logits") else out).float()

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if model.training:
            freeze_norm_statistics(model)
        return F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="sum")

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        total, labels, preds, logits = 0.0, [], [], None
        for batch in batches:
            with batch_context(model, batch):
                logits = self.logits(model, batch)
            total += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            labels += batch["labels"].tolist()
            preds += logits.argmax(-1).tolist()
        self.last_predictions = (labels, preds)  # per-example outputs for bootstrap intervals (classify-eval)
        if not labels:
            return {}
        num = max(len(self.labels), int(logits.shape[-1]))
        return {"eval_loss": total / len(labels), **classification_metrics(labels, preds, num)}

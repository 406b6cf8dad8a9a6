"""Vision models: the image preprocessing a model expects, a fresh classifier head for a new label set, and
random-initialised model folders (a from-scratch baseline, or the start of pretraining when no weights can be
downloaded).

Preprocessing goes through the model folder's own image processor (`preprocessor_config.json`, read by
transformers' AutoImageProcessor) when it has one. Without one the documented default applies: convert to the
model's channel count (RGB for 3, L for 1), resize to `image_size` (the model config's, else 224) with bilinear
filtering, scale to [0, 1] and normalise with mean 0.5 and std 0.5 per channel (so pixels lie in [-1, 1]).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

DEFAULT_IMAGE_SIZE = 224
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5


@dataclasses.dataclass
class ImagePreprocessor:
    """One PIL image -> the (channels, height, width) float32 tensor the model takes as pixel_values."""

    processor: Any
    """The model folder's transformers image processor, or None for the default resize + normalise."""
    channels: int = 3
    size: tuple[int, int] = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    """(height, width) of the default path (a processor has its own)."""
    name: str = ""

    def __call__(self, image) -> torch.Tensor:
        image = image.convert("RGB" if self.channels == 3 else "L") if self.channels in (1, 3) else image
        if self.processor is not None:
            return self.processor(image, return_tensors="pt")["pixel_values"][0].float()
        from PIL import Image

        resized = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        data = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
        pixels = data.view(self.size[0], self.size[1], -1).permute(2, 0, 1).float() / 255.0
        return (pixels - DEFAULT_MEAN) / DEFAULT_STD

    def describe(self) -> str:
        if self.processor is not None:
            return f"{type(self.processor).__name__} of {self.name}"
        return (f"default: resize to {self.size[0]}x{self.size[1]}, {self.channels} channel(s), "
                f"(x - {DEFAULT_MEAN}) / {DEFAULT_STD}")


def load_image_preprocessor(name_or_path, image_size: int | None = None) -> ImagePreprocessor:
    """The preprocessing of a vision model: its folder's image processor when it has one (a hub id: the hub's),
    else the default (see the module docstring). image_size replaces the default path's size; with a processor of
    its own it is an error, since the processor decides the size the model was trained at."""
    from transformers import AutoConfig

    from .packaged import resolve_model

    source = resolve_model(name_or_path)
    location = source.location
    local = {} if source.is_hub else {"local_files_only": True}
    try:
        config = AutoConfig.from_pretrained(location, **local)
    except (OSError, ValueError):
        config = None
    channels = int(getattr(config, "num_channels", 3) or 3)
    processor = None
    has_file = source.is_hub or (Path(location) / "preprocessor_config.json").is_file()
    if has_file:
        processor = _auto_processor(location, local)
    if processor is not None and image_size is not None:
        raise ConfigError(f"{source.canonical} has its own image processor, which sets the image size; remove "
                          "task.image_size (or the folder's preprocessor_config.json)", key="task.image_size")
    size = image_size or getattr(config, "image_size", None) or DEFAULT_IMAGE_SIZE
    size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    return ImagePreprocessor(processor, channels, size, source.canonical)


def _auto_processor(location: str, local: dict):
    import logging

    from transformers import AutoImageProcessor

    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "requires torchvision, falling back to the PIL processor": that is fine here
    try:
        return AutoImageProcessor.from_pretrained(location, **local)
    except (OSError, ValueError):
        return None
    finally:
        logger.setLevel(level)


def head_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of an image classifier's head: transformers' `classifier`, a timm model's
    `get_classifier()` (bare, or inside transformers' TimmWrapper as `timm_model`), else `head` / `fc`."""
    module = getattr(model, "classifier", None)
    if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
        return "classifier", module
    inner = getattr(model, "timm_model", model)
    get = getattr(inner, "get_classifier", None)
    head = get() if callable(get) else None
    for name, module in model.named_modules():
        wanted = module is head or (head is None and name in ("head", "fc"))
        if name and wanted and any(True for _ in module.parameters()):
            return name, module
    return None


def stored_labels(model: nn.Module) -> list[str] | None:
    """The label names a checkpoint's config records, or None for transformers' placeholder names (LABEL_i)."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def set_labels(model: nn.Module, labels: list[str]) -> bool:
    """Record the label names in the model config; when the stored names differ (a transfer to another label
    set of the same size), re-initialise the head, whose rows meant other classes. True when it was reset."""
    old = stored_labels(model)
    reset = old is not None and old != list(labels)
    if reset:
        found = head_module(model)
        for module in found[1].modules() if found is not None else ():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.reset_parameters()  # PyTorch's default initialisation of the layer
    config = getattr(model, "config", None)
    if config is not None:
        config.id2label = {i: str(name) for i, name in enumerate(labels)}
        config.label2id = {str(name): i for i, name in enumerate(labels)}
    return reset


ARCHITECTURES = ("resnet", "vit")


def vision_config(arch: str, num_labels: int, image_size: int, channels: int = 3, **overrides):
    """A small transformers config: ResNet (basic blocks, 3 stages 16/32/64 wide) or ViT (4 layers, width 64,
    patch 4). Overrides go into the config (depths, hidden_sizes, hidden_size, num_hidden_layers...)."""
    from transformers import ResNetConfig, ViTConfig

    if arch == "resnet":
        kw = {"num_channels": channels, "embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1],
              "layer_type": "basic", "num_labels": num_labels}
        return ResNetConfig(**{**kw, **overrides})
    if arch == "vit":
        kw = {"image_size": image_size, "patch_size": 4, "num_channels": channels, "hidden_size": 64,
              "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128, "num_labels": num_labels}
        return ViTConfig(**{**kw, **overrides})
    raise ConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}", key="arch")


def init_vision_model(out_dir, arch: str = "resnet", labels=("0", "1"), image_size: int = 32, channels: int = 3,
                      seed: int = 0, **overrides) -> Path:
    """Write a random-initialised image classifier (safetensors weights, a config that names the labels, and an
    image processor: resize to image_size, mean/std 0.5) as a model folder, atomically (a temporary sibling
    renamed into place). The start of pretraining when no weights can be downloaded, and the from-scratch
    baseline of a transfer comparison."""
    import shutil
    import tempfile

    from transformers import AutoModelForImageClassification

    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError("labels must be at least two distinct names", key="labels")
    config = vision_config(arch, len(labels), image_size, channels, **overrides)
    config.id2label = {i: name for i, name in enumerate(labels)}
    config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        write_processor(tmp, image_size, channels)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_processor(folder: Path, image_size: int, channels: int) -> None:
    """preprocessor_config.json of the default preprocessing, as transformers' ViT image processor reads it."""
    body = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": image_size, "width": image_size}, "resample": 2, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [DEFAULT_MEAN] * channels,
            "image_std": [DEFAULT_STD] * channels}
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(body, indent=2))

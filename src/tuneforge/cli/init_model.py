"""`tuneforge init-model`: a random-initialised vision model folder (models/vision.py: init_vision_model), the
start of pretraining and the from-scratch baseline when no weights can be downloaded."""
from __future__ import annotations

from typing import List, Optional

import typer


def init_model_cmd(
    out: str = typer.Argument(..., help="Model folder to write (replaced if it exists)."),
    arch: str = typer.Option("resnet", "--arch", help="resnet (3 stages, 16/32/64 channels) or vit (4 layers, width 64)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated label names, in head-output order."),
    labels_from: Optional[str] = typer.Option(None, "--labels-from",
                                              help="An image folder: its sorted class folder names are the labels "
                                                   "(the order task image_classify gives them by default)."),
    image_size: int = typer.Option(32, "--image-size", help="Input side in pixels (the image processor resizes to it)."),
    channels: int = typer.Option(3, "--channels", help="Input channels (3: images are converted to RGB)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random initialisation."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="A model config key: depths=[1,1], hidden_size=32."),
) -> None:
    """Write a random-initialised image classifier (weights, config, image processor) as a model folder."""
    import yaml

    from tuneforge.models.vision import init_vision_model

    overrides = {}
    for item in set_ or ():
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    if (labels is None) == (labels_from is None):
        raise typer.BadParameter("give exactly one of --labels and --labels-from", param_hint="--labels")
    if labels_from is not None:
        from pathlib import Path

        folder = Path(labels_from)
        if not folder.is_dir():
            raise typer.BadParameter(f"{labels_from} is not a folder", param_hint="--labels-from")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        names = [x.strip() for x in labels.split(",") if x.strip()]
    typer.echo(init_vision_model(out, arch=arch, labels=names, image_size=image_size, channels=channels, seed=seed,
                                 **overrides))


def register(app: typer.Typer) -> None:
    app.command("init-model")(init_model_cmd)

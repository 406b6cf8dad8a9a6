"""`tuneforge data ...`: look at the data a run config will train on."""
from __future__ import annotations

from typing import List, Optional

import typer

data_app = typer.Typer(help="Inspect training data.", no_args_is_help=True)


@data_app.callback()
def _data() -> None:
    """Inspect training data (what the model is trained on, token lengths, packing)."""


@data_app.command("preview")
def preview_cmd(
    config: str = typer.Argument(..., help="Run config YAML."),
    n: int = typer.Option(3, "--n", help="How many examples to show."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
) -> None:
    """Show examples with trained tokens marked ⟦…⟧ (preference pairs: the scored replies), then statistics."""
    typer.echo(preview_config(config, n=n, overrides=set_ or []))


def preview_config(config_path: str, n: int = 3, overrides: list[str] = ()) -> str:
    """The API behind `tuneforge data preview`: load the run config and its model's tokenizer, preview train."""
    from tuneforge.config import load_config
    from tuneforge.data import preview
    from tuneforge.models import load_tokenizer

    cfg = load_config(config_path, list(overrides))
    tokenizer = load_tokenizer(cfg.model.name)
    task_name = getattr(cfg, "task", "sft")
    if task_name in ("dpo", "reward") and cfg.task_config is not None and cfg.task_config.label_field is None:
        from tuneforge.data.preview import preview_pairs

        task = cfg.task_config
        return preview_pairs(cfg.data.train, tokenizer, cfg.data, template=task.template,
                             max_prompt_length=task.max_prompt_length, append_eos=task_name == "dpo", n=n)
    if cfg.data.mixture:  # a multi-task run: each data set as its own template and masking render it
        return "\n\n".join(f"=== mixture entry {source.name} ===\n"
                             + preview(source.train, tokenizer, cfg.data.for_source(source), n=n)
                             for source in cfg.data.mixture)
    return preview(cfg.data.train, tokenizer, cfg.data, n=n)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("digits")
def digits_cmd(
    out: str = typer.Argument(..., help="Folder to write (replaced if it exists)."),
    per_class: int = typer.Option(20, "--per-class", help="Labelled pool per digit of the transfer label set."),
    tune_per_class: int = typer.Option(20, "--tune-per-class",
                                       help="Images per transfer digit set aside for choosing learning rates."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits."),
    rotations: bool = typer.Option(False, "--rotations",
                                   help="Also pretrain-rot/: 20 classes, each of 0-4 at 0, 90, 180 and 270 degrees."),
    pretrain: str = typer.Option("0,1,2,3,4", "--pretrain", help="Digits to pretrain on ('' for none)."),
    transfer: str = typer.Option("5,6,7,8,9", "--transfer", help="Digits to transfer to with few labels."),
) -> None:
    """Write scikit-learn's bundled digits as image folders: digits 0-4 to pretrain on, 5-9 with few labels to
    transfer to (offline; BSD-3 / CC BY 4.0, see the LICENSE.txt written with them)."""
    from tuneforge.data.digits import write_digits

    def digits(text: str, key: str) -> tuple:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise typer.BadParameter(f"expected comma-separated digits, got {text!r}", param_hint=key) from None

    typer.echo(write_digits(out, pretrain=digits(pretrain, "--pretrain"), transfer=digits(transfer, "--transfer"),
                             per_class=per_class, tune_per_class=tune_per_class, seed=seed, rotations=rotations))


@data_app.command("glyphs")
def glyphs_cmd(
    out: str = typer.Argument(..., help="Folder to write (replaced if it exists)."),
    per_class: int = typer.Option(300, "--per-class", help="Training images per letter."),
    validation_per_class: int = typer.Option(40, "--validation-per-class", help="Validation images per letter."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fonts and distortions drawn."),
) -> None:
    """Write synthetic letters rendered from matplotlib's fonts as 8x8 images in the format of the digits: a broad
    pretraining source for the offline transfer demonstration (42 classes; no digits)."""
    from tuneforge.data.glyphs import write_glyphs

    typer.echo(write_glyphs(out, per_class=per_class, validation_per_class=validation_per_class, seed=seed))

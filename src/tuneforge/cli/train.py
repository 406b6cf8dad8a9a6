"""`tuneforge train CONFIG [--set a.b=c ...] [--dry-run] [--no-resume]`: a thin call of tuneforge.train.train."""
from __future__ import annotations

from typing import List, Optional

import typer


def train_cmd(
    config: str = typer.Argument(..., help="Run config YAML."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List targeted modules and trainable parameters; do not train."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if output_dir holds checkpoints."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fine-tune as the config says; resumes from output_dir/checkpoints when a run was interrupted (Ctrl-C)."""
    from tuneforge.train.api import train

    try:
        train(config, overrides=set_ or [], progress=not quiet, resume=not no_resume, dry_run=dry_run)
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)

"""`tuneforge checkpoint-adapter OUTPUT_DIR/checkpoints/step-N [--out DIR]`: a step checkpoint as an adapter
folder that `eval`, `generate` and `merge` read (tuneforge.train.checkpoint_adapter)."""
from __future__ import annotations

from typing import List, Optional

import typer


def checkpoint_adapter_cmd(
    checkpoints: List[str] = typer.Argument(..., help="Checkpoint folders (OUTPUT_DIR/checkpoints/step-N)."),
    out: Optional[str] = typer.Option(None, "--out", help="Adapter folder (one checkpoint only; default "
                                      "OUTPUT_DIR/adapter-step-N)."),
) -> None:
    """Write each checkpoint's trainable weights as the adapter the run would have saved at that step."""
    from tuneforge.train.checkpoint_adapter import adapter_from_checkpoint

    if out is not None and len(checkpoints) > 1:
        raise typer.BadParameter("--out names one folder: give one checkpoint, or leave --out out")
    for checkpoint in checkpoints:
        typer.echo(f"adapter     {adapter_from_checkpoint(checkpoint, out)}")


def register(app: typer.Typer) -> None:
    app.command("checkpoint-adapter")(checkpoint_adapter_cmd)

"""`tuneforge merge`: bake an adapter into the base weights and save a standalone transformers model."""
from __future__ import annotations

from typing import Optional

import typer


def merge_cmd(
    adapter: str = typer.Option(..., "--adapter", help="Adapter directory to merge."),
    out: str = typer.Option(..., "--out", help="Directory for the merged model."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model (default: the base recorded in the adapter)."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out directory."),
) -> None:
    """Merge ADAPTER into BASE and save a model that loads with plain transformers."""
    from tuneforge.io.merge import merge

    path = merge(base, adapter, out, dtype=dtype, force=force)
    typer.echo(f"merged model written to {path}")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)

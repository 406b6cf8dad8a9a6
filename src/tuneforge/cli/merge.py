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
    quantization: Optional[str] = typer.Option(
        None, "--quantization", help="nf4, fp4 or int8: the adapter was trained on a base quantised so (QLoRA) "
        "and records no base_quantization.json (e.g. it was trained with peft)."
    ),
    double_quant: bool = typer.Option(True, "--double-quant/--no-double-quant", help="With --quantization."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load pickle weights (adapter_model.bin, pytorch_model.bin): they can run "
        "code, so only for files you trust."),
) -> None:
    """Merge ADAPTER into BASE and save a model that loads with plain transformers. An adapter trained on a
    4-bit/8-bit base is merged into the dequantised base weights it was trained against."""
    from tuneforge.io.merge import merge

    spec = {"quantization": quantization, "double_quant": double_quant} if quantization else None
    path = merge(base, adapter, out, dtype=dtype, force=force, quantization=spec, allow_pickle=allow_pickle)
    typer.echo(f"merged model written to {path}")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)

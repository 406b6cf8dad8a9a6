"""`tuneforge combine`: weighted sum / concatenation / SVD of LoRA adapters into a new adapter folder."""
from __future__ import annotations

from typing import List, Optional

import typer

from tuneforge.errors import ConfigError


def _parse_weights(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights takes comma-separated numbers, e.g. 0.5,0.5 or 1,-1; got {text!r}",
                          key="weights") from None


def combine_cmd(
    adapters: List[str] = typer.Argument(..., help="Adapter folders (peft format) of the same base model."),
    out: str = typer.Option(..., "--out", help="Folder for the combined adapter."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="One weight per adapter, comma-separated (default 1 each); negative subtracts."
    ),
    how: str = typer.Option("cat", "--how", help="cat (exact, ranks add up), svd (rank --rank) or linear "
                            "(peft's factor sum, same ranks)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Target rank for --how svd (default: the largest r)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the one the adapters record)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load pickle weights (adapter_model.bin, pytorch_model.bin): they can run "
        "code, so only for files you trust."),
) -> None:
    """Combine LoRA adapters (lora, rslora, LoRA-FA, LoRA+, PiSSA, Delta-LoRA files; DoRA with --how svd) into one
    adapter: task arithmetic such as `--weights 1,-1`. Same arithmetic as peft's add_weighted_adapter."""
    from tuneforge.io.combine import combine_adapters

    path = combine_adapters(adapters, out, _parse_weights(weights), how=how, rank=rank, base=base, force=force,
                            allow_pickle=allow_pickle)
    typer.echo(f"combined adapter written to {path}")


def register(app: typer.Typer) -> None:
    app.command("combine")(combine_cmd)

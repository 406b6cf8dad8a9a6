"""`tuneforge forgetting CONFIG [--adapter DIR]`: probes before vs after fine-tuning (tuneforge.eval.forgetting)."""
from __future__ import annotations

from typing import List, Optional

import typer


def forgetting_cmd(
    config: str = typer.Argument(..., help="Run config YAML with eval.probes."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter to compare with the base model "
                                          "(default: eval.systems' adapters, else OUTPUT_DIR/adapter)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", help="Results folder (default: OUTPUT_DIR/eval)."),
) -> None:
    """Score each probe with the base model and with the adapter, and print the change per probe."""
    from tuneforge.eval.forgetting import forgetting

    result = forgetting(config, overrides=set_ or [], adapter=adapter, out_dir=out)
    typer.echo("\n" + result["markdown"])
    typer.echo(f"report      {result['path']}")


def register(app: typer.Typer) -> None:
    app.command("forgetting")(forgetting_cmd)

"""`tuneforge interpolate CONFIG --alphas 0,0.25,0.5,0.75,1 [--save-alpha A --save-dir DIR]`: WiSE-FT
(tuneforge.eval.interpolate)."""
from __future__ import annotations

from typing import List, Optional

import typer


def interpolate_cmd(
    config: str = typer.Argument(..., help="Run config YAML: eval.tasks (the fine-tuned task) and eval.probes."),
    alphas: str = typer.Option("0,0.25,0.5,0.75,1", "--alphas", help="Comma-separated alphas (0 = pretrained, 1 = fine-tuned)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter directory (default: OUTPUT_DIR/adapter)."),
    finetuned: Optional[str] = typer.Option(None, "--finetuned", help="A fully fine-tuned model directory instead of an adapter."),
    save_alpha: Optional[float] = typer.Option(None, "--save-alpha", help="Also save the model at this alpha."),
    save_dir: Optional[str] = typer.Option(None, "--save-dir", help="Where --save-alpha writes the model."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --save-dir."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", help="Results folder (default: OUTPUT_DIR/eval)."),
) -> None:
    """Evaluate theta(alpha) = (1 - alpha) theta_pre + alpha theta_ft at each alpha; write a table and a plot."""
    from tuneforge.eval.interpolate import interpolate

    result = interpolate(config, overrides=set_ or [], adapter=adapter, finetuned=finetuned, alphas=alphas,
                         save_alpha=save_alpha, save_dir=save_dir, force=force, out_dir=out)
    typer.echo("\n" + result["markdown"])
    for key, path in result["paths"].items():
        typer.echo(f"{key:<12}{path}")


def register(app: typer.Typer) -> None:
    app.command("interpolate")(interpolate_cmd)

"""`tuneforge eval CONFIG [--forgetting] [--out DIR] [--set a.b=c ...]`: a thin call of tuneforge.evaluate."""
from __future__ import annotations

from typing import List, Optional

import typer


def eval_cmd(
    config: str = typer.Argument(..., help="Run config YAML with an eval section (tasks, systems, probes)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
    forgetting: bool = typer.Option(False, "--forgetting", help="Also score eval.probes before vs after each adapter."),
    out: Optional[str] = typer.Option(None, "--out", help="Results folder (default: OUTPUT_DIR/eval)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the 95% intervals (0: none)."),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draw."),
) -> None:
    """Score every task with every system (zero-shot, few-shot, adapters), with bootstrap 95% intervals and the
    paired interval of each system against the first; write results.md/.json and predictions."""
    from tuneforge.eval.harness import evaluate

    result = evaluate(config, overrides=set_ or [], out_dir=out, forgetting=forgetting, resamples=resamples,
                      bootstrap_seed=bootstrap_seed)
    typer.echo("\n" + result["markdown"])
    if forgetting:
        typer.echo(result["forgetting"]["markdown"])
    for key, path in result["paths"].items():
        typer.echo(f"{key:<12}{path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)

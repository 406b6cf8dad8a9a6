"""`tuneforge compare CONFIG.yaml`: many methods on one task under one budget -> results.md / .csv / plot.
A thin call of tuneforge.eval.compare.compare."""
from __future__ import annotations

from typing import List, Optional

import typer


def compare_cmd(
    config: str = typer.Argument(..., help="Compare config YAML (see configs/compare/)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a shared key: a.b=value (repeatable)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated method labels to run (others keep "
                                       "their earlier results in the table)."),
    rerun: bool = typer.Option(False, "--rerun", help="Train every method again even if its result is cached."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Methods trained at once, each in its own "
                                       "process with cores/jobs threads (default: the config's `jobs`, else 1)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Run the comparison once per seed (e.g. 42,43,44) "
                                        "into OUTPUT_DIR/seed-<seed>; write seeds.md with mean +- std."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the 95% intervals (0: none)."),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draw."),
) -> None:
    """Train each listed method with the same data, epochs and seed; write a table (bootstrap intervals, paired
    differences to the best) and a plot; --seeds repeats it per seed."""
    from tuneforge.eval.compare import compare, compare_seeds

    labels = [s.strip() for s in only.split(",") if s.strip()] if only else None
    if seeds is not None:
        result = compare_seeds(config, seeds, overrides=set_ or [], only=labels, reuse=not rerun, echo=typer.echo,
                               jobs=jobs, resamples=resamples, bootstrap_seed=bootstrap_seed)
        typer.echo(open(result["paths"]["markdown"]).read())
        return
    compare(config, overrides=set_ or [], only=labels, reuse=not rerun, echo=typer.echo, jobs=jobs,
            resamples=resamples, bootstrap_seed=bootstrap_seed)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)

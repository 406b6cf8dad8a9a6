"""`tuneforge train CONFIG [--set a.b=c ...] [--dry-run] [--no-resume] [--seeds 42,43,44] [--nproc N ...]`:
a thin call of tuneforge.train.train, or with --nproc / --nnodes of tuneforge.train.launcher.launch, which execs
torchrun running `python -m tuneforge train CONFIG ...` in each process."""
from __future__ import annotations

from typing import List, Optional

import typer


def train_cmd(
    config: str = typer.Argument(..., help="Run config YAML."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List targeted modules and trainable parameters; do not train."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if output_dir holds checkpoints."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (one per GPU; gloo on CPU) via torchrun."),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines in the run; each runs the same command."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT all nodes meet at."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Run the recipe once per seed (e.g. 42,43,44) into "
                                        "OUTPUT_DIR/seed-<seed>; print mean +- std of the final metrics."),
) -> None:
    """Fine-tune as the config says; resumes from output_dir/checkpoints when a run was interrupted (Ctrl-C)."""
    from tuneforge.train.api import train

    if seeds is not None:
        if nproc > 1 or nnodes > 1 or dry_run:
            raise typer.BadParameter("--seeds runs in this process: not with --nproc/--nnodes/--dry-run")
        from tuneforge.train.seeds import train_seeds

        summary = train_seeds(config, seeds, set_ or [], progress=not quiet, resume=not no_resume)
        typer.echo(open(summary["paths"]["markdown"]).read())
        return

    if (nproc > 1 or nnodes > 1) and not dry_run:
        from tuneforge.train.launcher import launch

        status = launch(config, set_ or [], nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                        resume=not no_resume, progress=not quiet, replace_process=True)  # execs torchrun
        raise typer.Exit(status)
    try:
        train(config, overrides=set_ or [], progress=not quiet, resume=not no_resume, dry_run=dry_run)
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    except Exception as err:  # one process of a torchrun group: its summary then shows this message
        from tuneforge.train.launcher import record_failure

        record_failure(err)
        raise


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)

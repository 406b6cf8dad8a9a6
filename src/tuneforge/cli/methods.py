"""`tuneforge methods`: list every adaptation method (kind, mergeable, trainable-parameter formula, paper)."""
from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("methods")
    def methods_cmd(
        markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON (with each method's config fields)."),
    ) -> None:
        """List the registered adaptation methods."""
        from tuneforge.methods import describe_methods, methods_table

        rows = describe_methods()
        typer.echo(json.dumps(rows, indent=2) if as_json else methods_table(rows, markdown=markdown))

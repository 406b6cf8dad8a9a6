"""`tuneforge push DIR REPO_ID`: upload an adapter / merged model / export folder to the Hugging Face Hub."""
from __future__ import annotations

from typing import Optional

import typer


def push_cmd(
    folder: str = typer.Argument(..., help="Folder to upload (e.g. runs/x/adapter; its README.md is the card)."),
    repo_id: str = typer.Argument(..., help="Hub model repo, user-or-org/name (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (default main)."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the Hub to answer before giving up."),
) -> None:
    """Upload FOLDER to the Hub as REPO_ID. Needs the network and a write token (HF_TOKEN or `hf auth login`)."""
    from tuneforge.io.hub import push_folder

    url = push_folder(folder, repo_id, private=private, revision=revision, message=message, timeout=timeout)
    typer.echo(f"pushed {folder} -> {url}")


def register(app: typer.Typer) -> None:
    app.command("push")(push_cmd)

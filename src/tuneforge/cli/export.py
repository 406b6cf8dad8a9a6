"""`tuneforge export`: a model (adapter merged in) as a GGUF file for llama.cpp, or GGUF + Modelfile for Ollama."""
from __future__ import annotations

from typing import Optional

import typer


def export_cmd(
    out: str = typer.Option(..., "--out", help="The .gguf file (--format gguf) or a folder (--format ollama)."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model: packaged alias, folder, .gguf or hub id (default: the adapter's base)."
    ),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter folder to merge in first."),
    format: str = typer.Option("gguf", "--format", help="gguf, or ollama (model.gguf + Modelfile in --out)."),
    quant: str = typer.Option("f16", "--quant", help="f32 (lossless), f16 or q8_0."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a bar over the tensors."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also read pickle weights (pytorch_model.bin, adapter_model.bin): only for "
        "files you trust, since unpickling can run code."
    ),
) -> None:
    """Export BASE (+ ADAPTER, merged) for llama.cpp or Ollama. Llama, Mistral and Qwen2 architectures."""
    from tuneforge.io.export import export_model

    path = export_model(base, out, adapter=adapter, format=format, quant=quant, force=force, progress=progress,
                         allow_pickle=allow_pickle)
    if format == "ollama":
        typer.echo(f"wrote {path}/model.gguf and {path}/Modelfile; run: ollama create NAME -f {path}/Modelfile")
    else:
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)

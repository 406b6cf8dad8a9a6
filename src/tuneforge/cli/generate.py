"""`tuneforge generate`: reply to a prompt with a base model, optionally through an adapter."""
from __future__ import annotations

from typing import List, Optional

import typer


def generate_cmd(
    prompt: List[str] = typer.Option(..., "--prompt", "-p", help="Prompt text (repeat for several)."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model: packaged alias, local dir, .gguf file or hub id "
        "(default: the adapter's base, else smollm2-135m-instruct)."
    ),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter directory to apply."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest reply, in tokens."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --sample)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for --sample."),
    raw: bool = typer.Option(False, "--raw", help="Feed the prompt as is, without the chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (chat mode)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load pickle weights (adapter_model.bin, pytorch_model.bin): they can run "
        "code, so only for files you trust."),
) -> None:
    """Print the model's reply to each --prompt."""
    from tuneforge.eval.generation import generate

    replies = generate(
        base, adapter, prompts=list(prompt), max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature, top_p=top_p, chat=not raw, system_prompt=system, device=device, seed=seed,
        allow_pickle=allow_pickle,
    )
    for i, reply in enumerate(replies):
        if len(replies) > 1:
            typer.echo(f"--- [{i + 1}] {prompt[i]}")
        typer.echo(reply)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)

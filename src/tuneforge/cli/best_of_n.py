"""`tuneforge best-of-n`: on-policy preference pairs for DPO. Sample N replies per prompt from a base model (or
base + policy adapter), score them with a reward adapter, write the best and the worst of each prompt as a
{prompt, chosen, rejected} record (tuneforge.eval.best_of_n)."""
from __future__ import annotations

from typing import Optional

import typer


def best_of_n_cmd(
    data: str = typer.Option(..., "--data", help="Prompts: a data set reference (sst2:train) or a .jsonl/.json file."),
    reward_adapter: str = typer.Option(..., "--reward-adapter", help="Adapter dir of a `task: reward` run on the "
                                       "same base (its scalar head scores the replies)."),
    out: str = typer.Option(..., "--out", help="Where to write the pairs (.jsonl)."),
    field: str = typer.Option("text", "--field", help="The record field holding the prompt text."),
    prompt_words: Optional[int] = typer.Option(None, "--prompt-words", help="Keep only the first N words of "
                                               "each prompt (review openings); records of N words or fewer are skipped."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use a seeded sample of this many records."),
    samples: int = typer.Option(4, "--samples", help="Replies sampled per prompt (>= 2)."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", help="Longest reply, in tokens."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    min_margin: float = typer.Option(0.0, "--min-margin", help="Drop prompts whose best and worst replies' "
                                     "rewards differ by this much or less."),
    context: Optional[str] = typer.Option(None, "--context", help="Context distillation: also sample --samples "
                                          "replies per prompt from this text, '{prompt}' standing for the prompt "
                                          "(e.g. an instruction or a steering prefix); every reply is scored and "
                                          "paired against the bare prompt."),
    chat: bool = typer.Option(False, "--chat", help="Prompt through the chat template (default: raw text, as "
                              "`template: raw` DPO reads the pairs)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the reward adapter's base)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="A policy adapter to sample from (iterating)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the record sample and of sampling."),
) -> None:
    """Write best-of-N / worst-of-N preference pairs, scored by a reward adapter, for `task: dpo`."""
    from tqdm import tqdm

    from tuneforge.config.data_sets import resolve_data_path
    from tuneforge.data.formatting import split_opening
    from tuneforge.data.readers import line_of
    from tuneforge.data.sources import read_source
    from tuneforge.errors import DataError
    from tuneforge.eval.best_of_n import best_of_n_pairs, write_pairs
    from tuneforge.eval.generation import adapter_base
    from tuneforge.io import load_adapter, read_adapter_config
    from tuneforge.models import load_model, load_tokenizer

    if samples < 2:
        raise typer.BadParameter("at least 2 samples per prompt are needed to make a pair", param_hint="--samples")
    if context is not None and "{prompt}" not in context:
        raise typer.BadParameter(f"must hold {{prompt}} where each prompt goes, got {context!r}",
                                 param_hint="--context")
    if prompt_words is not None and prompt_words < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--prompt-words")
    read_adapter_config(reward_adapter)  # a wrong directory stops here, before any sampling
    records, source = read_source(resolve_data_path(data, key="--data"), limit=limit, seed=seed)
    prompts = []
    for i, record in enumerate(records):
        if field not in record or not isinstance(record[field], str):
            raise DataError(f"no text field '{field}' (set --field)", file=source, line=line_of(record, i), key=field)
        if prompt_words is None:
            prompts.append(record[field])
            continue
        opening, rest = split_opening(record[field], prompt_words)
        if rest:  # more than prompt_words words
            prompts.append(opening)
    if not prompts:
        raise DataError("no prompts left (every text has --prompt-words words or fewer)", file=source)
    base = base or adapter_base(adapter or reward_adapter)
    if base is None:
        raise typer.BadParameter("the reward adapter records no base model; give --base", param_hint="--base")
    model, tokenizer = load_model(base), load_tokenizer(base)
    if adapter is not None:
        load_adapter(model, adapter)
    bar = tqdm(total=len(prompts), desc="sampling", unit="prompt")
    pairs = best_of_n_pairs(model, tokenizer, reward_adapter, prompts, samples=samples,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, chat=chat,
                            min_margin=min_margin, seed=seed, context=context, progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    path = write_pairs(pairs, out)
    if pairs:
        gap = sum(p["chosen_reward"] - p["rejected_reward"] for p in pairs) / len(pairs)
        typer.echo(f"{len(pairs)} pairs from {len(prompts)} prompts -> {path} (mean reward gap {gap:.3f}; "
                   f"chosen {sum(p['chosen_reward'] for p in pairs) / len(pairs):.3f})")
    else:
        typer.echo(f"no pairs: every prompt's replies tied -> {path}")


def register(app: typer.Typer) -> None:
    app.command("best-of-n")(best_of_n_cmd)

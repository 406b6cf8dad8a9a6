"""`tuneforge demo`: fine-tune the packaged SmolLM2 with LoRA on shipped Alpaca data, then show before/after."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_CONFIG = "configs/demo_smollm2_alpaca_lora.yaml"


def demo(config: str = DEFAULT_CONFIG, overrides=(), progress: bool = True) -> dict:
    """Train the config, reload base + adapter, and compare before (adapters disabled) vs after."""
    from ..config import load_config
    from ..eval.before_after import compare_before_after, format_table
    from ..io import load_adapter
    from ..models import load_model_for, load_tokenizer
    from ..registry import TASKS
    from ..train import train

    result = train(config, overrides, progress=progress)
    cfg = load_config(Path(result.output_dir) / "config.yaml")
    model = load_model_for(cfg.model)
    tokenizer = load_tokenizer(cfg.model.name)
    load_adapter(model, Path(result.output_dir) / "adapter", allow_pickle=cfg.model.allow_pickle)
    task = TASKS.get(cfg.task)()
    _, eval_examples = task.prepare(cfg, tokenizer)
    print(f"\nbefore/after on the validation split: loss over {len(eval_examples)} batch rows, and "
          f"{min(cfg.eval.num_samples, 10**9)} generated replies (ROUGE-L, greedy, {cfg.eval.max_new_tokens} new tokens)")
    report = compare_before_after(model, tokenizer, task, cfg, eval_examples,
                                  out_path=Path(result.output_dir) / "before_after.json")
    print(format_table(report))
    sample = report["samples"][0] if report["samples"] else None
    if sample:
        print(f"\nexample prompt: {sample['prompt'][:200]}\n  before: {sample['before'][:200]}\n"
              f"  after:  {sample['after'][:200]}\n  reference: {sample['reference'][:200]}")
    print(f"\nbefore/after details: {Path(result.output_dir) / 'before_after.json'}")
    return report


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        config: str = typer.Option(DEFAULT_CONFIG, help="Run config to train and compare."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: a.b=value."),
    ) -> None:
        """Fine-tune SmolLM2-135M-Instruct with LoRA on Alpaca, then print a before/after table."""
        demo(config, set_ or ())

"""`evaluate(config)`: the API behind `tuneforge eval`. Scores every task of `eval.tasks` with every system of
`eval.systems` (the base model zero-shot, few-shot with random or retrieved demonstrations, fine-tuned adapters)
on one loaded base model, and writes:

    <out>/results.md             one table per task: systems x metrics, with sample sizes
    <out>/results.json           the same rows as data (plus the settings used)
    <out>/predictions/<task>.<system>.jsonl   each example: prompt, references, prediction, scores
    <out>/forgetting.md|json     with forgetting=True: the probes before vs after each adapter

Adapters are loaded once each under their own name and switched between systems; base-model systems run with
adapters disabled, so every row shares the very same base weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import resolve_config
from .bootstrap import settings as bootstrap_settings
from .forgetting import probe_changes
from .report import results_markdown, write_text
from .systems import EncoderCache, default_systems, default_tasks, load_base, score_systems


def evaluate(config_or_path=None, overrides=(), *, out_dir=None, forgetting: bool = False, log=print,
             resamples: int = 1000, bootstrap_seed: int = 0) -> dict:
    """Score eval.tasks x eval.systems of a run config and write the results (see the module docstring), each
    metric with a bootstrap 95% interval (`resamples` draws of the examples, seeded; 0 turns them off) and each
    system after the first with the paired interval of its difference to the first.

    Returns {"rows", "markdown", "forgetting" (with forgetting=True), "paths"}."""
    cfg = resolve_config(config_or_path, overrides)
    tasks = cfg.eval.tasks or default_tasks(cfg)
    systems = cfg.eval.systems or default_systems(cfg)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "eval"
    settings = {k: getattr(cfg.eval, k) for k in ("num_samples", "max_new_tokens", "batch_size", "do_sample",
                                                    "temperature", "top_p", "seed")}

    def write_results(rows: list[dict]) -> dict:
        return {"markdown": str(write_text(out / "results.md", results_markdown(rows))),
                "json": str(write_text(out / "results.json", json.dumps(
                    {"model": cfg.model.name, "settings": settings, "bootstrap": bootstrap_settings(resamples,
                                                                                                bootstrap_seed),
                 "rows": rows}, indent=2))),
                "predictions": str(out / "predictions")}

    model, tokenizer = load_base(cfg)
    encoder = EncoderCache(cfg.eval.encoder, out / "cache")
    rows = score_systems(model, tokenizer, cfg.eval, tasks, systems, out / "predictions", encoder, log,
                         on_row=write_results, resamples=resamples, bootstrap_seed=bootstrap_seed)
    result = {"rows": rows, "markdown": results_markdown(rows), "paths": write_results(rows)}
    if forgetting:
        result["forgetting"] = probe_changes(model, tokenizer, cfg, systems, out, log=log)
    return result

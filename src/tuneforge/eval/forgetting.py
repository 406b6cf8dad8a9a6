"""Catastrophic forgetting: does the fine-tune still do what the base model could already do?

A probe is an eval task the base model is good at (instruction following scored by ROUGE-L and reference
loss; perplexity on held general text). Each probe is scored with adapters disabled (before) and with each
adapter (after); the report gives the change per probe and metric (McCloskey & Cohen 1989; Kirkpatrick et al.
2017, https://arxiv.org/abs/1612.00796). A probe should be one the base model actually passes: for
SmolLM2-135M, RTE by yes/no likelihood is at chance, so a drop there would mean nothing (it stays available as
an optional choice-task probe).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import resolve_config
from ..config.eval import EvalSystem
from ..errors import ConfigError
from .report import LOWER_IS_BETTER, change_markdown, results_markdown, write_text
from .systems import default_systems, load_base, score_systems

BASE = "base"


def compare(rows: list[dict], base_system: str = BASE) -> list[dict]:
    """{probe, system, metric, before, after, change} for every probe metric of every non-base system;
    `worse` says whether the change goes the wrong way."""
    before = {(r["task"], m): v for r in rows if r["system"] == base_system for m, v in r["metrics"].items()}
    out = []
    for r in rows:
        if r["system"] == base_system:
            continue
        for metric, after in r["metrics"].items():
            if (r["task"], metric) not in before:
                continue
            b = before[(r["task"], metric)]
            change = after - b
            out.append({"probe": r["task"], "system": r["system"], "metric": metric, "before": b, "after": after,
                        "change": change, "worse": change > 0 if metric in LOWER_IS_BETTER else change < 0})
    return out


def probe_changes(model, tokenizer, cfg, systems: list[EvalSystem], out: Path, log=print) -> dict:
    """Score cfg.eval.probes with the base model and every adapter system; write forgetting.md / .json."""
    if not cfg.eval.probes:
        raise ConfigError("no forgetting probes: add eval.probes (e.g. alpaca instruction following and held "
                          "general text; see configs/eval_forgetting.yaml)", key="eval.probes")
    adapters = [EvalSystem(name=s.name, adapter=s.adapter) for s in systems if s.adapter is not None]
    if not adapters:
        raise ConfigError("no adapter to compare with the base model: pass --adapter, list one in eval.systems, or "
                          "train the run first (output_dir/adapter)", key="eval.systems")
    rows = score_systems(model, tokenizer, cfg.eval, cfg.eval.probes, [EvalSystem(name=BASE)] + adapters,
                         out / "predictions" / "probes", log=log)
    changes = compare(rows)
    markdown = results_markdown(rows) + "\n" + change_markdown(changes)
    write_text(out / "forgetting.md", markdown)
    write_text(out / "forgetting.json", json.dumps({"model": cfg.model.name, "rows": rows, "changes": changes},
                                                   indent=2))
    return {"rows": rows, "changes": changes, "markdown": markdown, "path": str(out / "forgetting.md")}


def forgetting(config_or_path=None, overrides=(), *, adapter=None, out_dir=None, log=print) -> dict:
    """The API behind `tuneforge forgetting`: probes before (base) vs after (each adapter).

    The adapters: `adapter` when given, else those of eval.systems, else the run's output_dir/adapter."""
    cfg = resolve_config(config_or_path, overrides)
    if adapter is not None:
        systems = [EvalSystem(name=Path(adapter).parent.name or "fine-tuned", adapter=str(adapter))]
    else:
        systems = [s for s in cfg.eval.systems if s.adapter is not None] or default_systems(cfg)
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "eval"
    model, tokenizer = load_base(cfg)
    return probe_changes(model, tokenizer, cfg, systems, out, log=log)

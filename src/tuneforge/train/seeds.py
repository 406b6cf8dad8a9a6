"""`train --seeds 42,43,44`: one recipe run once per seed, to see how much of a result is the seed's.

Each run is the same config with `train.seed` set and its own output folder `OUTPUT_DIR/seed-<seed>`; the
final evaluation metrics of the runs are summarised as mean and sample standard deviation (n - 1) next to each
seed's value, in OUTPUT_DIR/seeds.json and seeds.md. A paired interval of the gain over another system needs the
per-example predictions: score the seed folders together with `tuneforge classify-eval` / `sts-eval` /
`retrieval-eval` (several runs, --baseline)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..errors import ConfigError


def parse_seeds(text) -> list[int]:
    """"42,43,44" (or a list) -> [42, 43, 44]; a clear error for anything else or a repeated seed."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        seeds = [int(str(s).strip()) for s in items if str(s).strip()]
    except ValueError:
        raise ConfigError(f"seeds must be comma-separated integers, got {text!r}", key="seeds") from None
    if not seeds:
        raise ConfigError("no seeds given", key="seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds repeat: {text!r}", key="seeds")
    return seeds


def seed_dir(output_dir, seed: int) -> Path:
    return Path(output_dir) / f"seed-{seed}"


def summarize(per_seed: dict[int, dict]) -> dict:
    """{"seeds", "per_seed": {seed: metrics}, "mean": {metric: m}, "std": {metric: s}} over the numeric
    metrics every seed reports (std is 0 for a single seed)."""
    names = [k for k, v in next(iter(per_seed.values())).items() if isinstance(v, (int, float))
             and all(isinstance(m.get(k), (int, float)) for m in per_seed.values())]
    mean = {k: statistics.fmean(m[k] for m in per_seed.values()) for k in names}
    std = {k: statistics.stdev([m[k] for m in per_seed.values()]) if len(per_seed) > 1 else 0.0 for k in names}
    return {"seeds": list(per_seed), "per_seed": {s: {k: m[k] for k in names} for s, m in per_seed.items()},
            "mean": mean, "std": std}


def summary_markdown(summary: dict, title: str = "") -> str:
    names = list(summary["mean"])
    lines = [f"# {title}".rstrip(), ""] if title else []
    if not names:
        return "\n".join(lines + [f"seeds {', '.join(map(str, summary['seeds']))}: no evaluation metrics (the "
                                   "config has no validation data); score the seed folders with an eval verb"]) + "\n"
    lines += ["| seed | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for seed, metrics in summary["per_seed"].items():
        lines.append(f"| {seed} | " + " | ".join(_fmt(metrics[k]) for k in names) + " |")
    lines.append("| mean ± std | " + " | ".join(f"{_fmt(summary['mean'][k])} ± {_fmt(summary['std'][k])}"
                                               for k in names) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def train_seeds(config_or_path, seeds, overrides=(), progress: bool = True, *, resume: bool = True) -> dict:
    """Train the config once per seed (output folders OUTPUT_DIR/seed-<seed>) and return summarize() of their
    final evaluation metrics plus "paths"; OUTPUT_DIR/seeds.json and seeds.md hold the same."""
    from .api import resolve_config, train

    seeds = parse_seeds(seeds)
    base = Path(resolve_config(config_or_path, overrides).output_dir)
    per_seed = {}
    for seed in seeds:
        out = seed_dir(base, seed)
        print(f"== seed {seed} -> {out}")
        result = train(config_or_path, [*overrides, f"train.seed={seed}", f"output_dir={out}"], progress,
                       resume=resume)
        per_seed[seed] = dict(result.eval_metrics)
    summary = summarize(per_seed)
    base.mkdir(parents=True, exist_ok=True)
    (base / "seeds.json").write_text(json.dumps({**summary, "runs": {s: str(seed_dir(base, s)) for s in seeds}},
                                                indent=2))
    (base / "seeds.md").write_text(summary_markdown(summary, f"{len(seeds)} seeds of {config_or_path}"
                                                   if isinstance(config_or_path, (str, Path)) else ""))
    return {**summary, "paths": {"json": str(base / "seeds.json"), "markdown": str(base / "seeds.md")}}

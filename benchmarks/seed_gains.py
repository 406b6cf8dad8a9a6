"""Seeds of one generative recipe as one system, against baselines, from a `tuneforge eval` output folder.

`tuneforge eval` gives every row its own interval and a paired difference to the task's first system. A recipe
trained over several seeds is one system whose value is the mean of its runs; this script reads the per-example
predictions that eval wrote (OUTPUT/predictions/<task>.<system>.jsonl, all rows on the same examples) and reports,
per metric: each seed's value, mean +- sample std over seeds, the bootstrap interval of the seed-mean, and for each
baseline the paired interval of mean(seeds) - baseline (same resampled examples for all) and of each seed alone.
Metrics are recomputed per resample as eval does (BLEU/chrF from summed n-gram statistics, ROUGE as a mean).

    python benchmarks/seed_gains.py runs/eval-scitldr/eval --task scitldr --metrics rougeL,rouge1 \
        --seeds "LoRA seed 42,LoRA seed 43,LoRA seed 44" --baselines "zero-shot,few-shot retrieved (k=2)"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from tuneforge.eval import bootstrap
from tuneforge.eval.example_stats import row_statistics
from tuneforge.eval.report import slug


def load_rows(folder: Path, task: str, system: str) -> list[dict]:
    path = folder / "predictions" / f"{slug(task)}.{slug(system)}.jsonl"
    if not path.is_file():
        raise SystemExit(f"no predictions for system {system!r}: {path} is missing")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fmt(d: dict, signed: bool = True) -> str:
    sign = "+" if signed else ""
    return f"{d['value']:{sign}.2f} [{d['low']:{sign}.2f}, {d['high']:{sign}.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a `tuneforge eval` output folder (holds predictions/)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--seeds", required=True, help="comma-separated system names: the runs of one recipe")
    ap.add_argument("--baselines", required=True, help="comma-separated system names to compare against; "
                    "'A+B+C' is one baseline, the mean of those systems (another recipe's seeds)")
    ap.add_argument("--metrics", required=True, help="comma-separated, e.g. rougeL or bleu,chrf")
    ap.add_argument("--resamples", type=int, default=bootstrap.RESAMPLES)
    ap.add_argument("--bootstrap-seed", type=int, default=bootstrap.SEED)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    seeds, baselines = args.seeds.split(","), args.baselines.split(",")
    metrics = args.metrics.split(",")
    kind = SimpleNamespace(type="generate")
    parts = {b: b.split("+") for b in baselines}  # a group of systems is compared as its mean
    rows = {s: load_rows(args.folder, args.task, s) for s in seeds + [p for b in baselines for p in parts[b]]}
    lines = {s: [r["line"] for r in rs] for s, rs in rows.items()}
    first = lines[seeds[0]]
    if any(v != first for v in lines.values()):
        raise SystemExit("the systems were scored on different examples; a paired comparison needs the same ones")
    n, rs, bs = len(first), args.resamples, args.bootstrap_seed
    stats = {s: row_statistics(kind, metrics, rows[s]) for s in rows}
    out: dict = {"folder": str(args.folder), "task": args.task, "n": n, "seeds": seeds, "baselines": baselines,
                 "bootstrap": bootstrap.settings(rs, bs), "metrics": {}}
    print(f"{args.task}: n={n} examples, {len(seeds)} runs; percentile bootstrap, {rs} resamples, seed {bs}\n")
    for m in metrics:
        per_seed = [bootstrap.point(stats[s][m], n) for s in seeds]
        mean, std = bootstrap.mean_std(per_seed)
        joint = bootstrap.mean_over([stats[s][m] for s in seeds])
        entry = {"per_seed": dict(zip(seeds, per_seed)), "mean": mean, "std": std,
                 "mean_interval": bootstrap.summary(joint, n, rs, bs), "baselines": {}}
        print(f"{m}: mean {mean:.2f} +- {std:.2f} over seeds ({', '.join(f'{v:.2f}' for v in per_seed)}); "
              f"interval of the mean {fmt(entry['mean_interval'], signed=False)}")
        for b in baselines:
            base = bootstrap.mean_over([stats[p][m] for p in parts[b]]) if len(parts[b]) > 1 else stats[b][m]
            gain = bootstrap.paired_summary(joint, base, n, rs, bs)
            each = [bootstrap.paired_summary(stats[s][m], base, n, rs, bs) for s in seeds]
            entry["baselines"][b] = {"value": bootstrap.point(base, n), "interval": bootstrap.summary(base, n, rs, bs),
                                     "gain_of_mean": gain, "gain_per_seed": dict(zip(seeds, each))}
            print(f"  vs {b} ({bootstrap.point(base, n):.2f}): mean gain {fmt(gain)}; per seed "
                  + "; ".join(fmt(d) for d in each))
        out["metrics"][m] = entry
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""A learning curve (training examples seen vs a metric) from the checkpoints of one run, scored by `tuneforge eval`.

Rows of the eval's results.json whose adapter is RUN/adapter-step-N (`tuneforge checkpoint-adapter`) or RUN/adapter
(the end of the run) are points; rows without an adapter (zero-shot, few-shot) are baselines, drawn as horizontal
lines; adapters of other runs are left out. Examples seen at step N = N / total steps x the training set size (the run's order is one shuffled epoch,
packed rows: the count is exact at the end and proportional in between). The run's validation loss at the
same step (metrics.jsonl, when it was evaluated there) is listed too.

    python benchmarks/learning_curve.py runs/eval-multi30k-curve/eval --run runs/multi30k-lora --train-size 5000 \
        --metrics bleu,chrf --plot docs/img/evaluation_multi30k_curve.png
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def run_steps(run: Path) -> tuple[int, dict[int, float]]:
    """(total steps, {step: eval_loss}) from the run's metrics.jsonl."""
    total, losses = 0, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        total = max(total, int(record.get("step", 0)))
        if "eval_loss" in record:
            losses[int(record["step"])] = record["eval_loss"]
    return total, losses


def step_of(adapter: str, run: Path, total: int) -> int | None:
    path = Path(adapter)
    if path.resolve().parent != run.resolve():
        return None
    if path.name == "adapter":
        return total
    match = re.fullmatch(r"adapter-step-(\d+)", path.name)
    return int(match.group(1)) if match else None


def cell(row: dict, m: str) -> str:
    return f"{row['metrics'][m]:.2f} [{row['intervals'][m][0]:.2f}, {row['intervals'][m][1]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", type=Path, nargs="+", help="`tuneforge eval` output folders (hold results.json)")
    ap.add_argument("--run", type=Path, required=True, help="the training run's output_dir")
    ap.add_argument("--train-size", type=int, required=True, help="training examples in the run's one epoch")
    ap.add_argument("--metrics", default="bleu,chrf")
    ap.add_argument("--plot", type=Path, help="write a PNG of the first metric against examples seen")
    args = ap.parse_args()
    metrics = args.metrics.split(",")
    total, losses = run_steps(args.run)
    points, baselines = [], []
    for folder in args.evals:
        for row in json.loads((folder / "results.json").read_text())["rows"]:
            if not row.get("adapter"):
                baselines.append((None, row))
            elif (step := step_of(row["adapter"], args.run, total)) is not None:
                points.append((step, row))  # adapters of other runs are left out
    points.sort(key=lambda p: p[0])
    print("| system | step | examples seen | validation loss | n | " + " | ".join(metrics) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(metrics))
    for _, row in baselines:
        print(f"| {row['system']} | - | 0 | - | {row['n']} | " + " | ".join(cell(row, m) for m in metrics) + " |")
    for step, row in points:
        seen = round(step / total * args.train_size)
        loss = f"{losses[step]:.3f}" if step in losses else "-"
        print(f"| {row['system']} | {step} | {seen:,} | {loss} | {row['n']} | "
              + " | ".join(cell(row, m) for m in metrics) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        m = metrics[0]
        xs = [round(s / total * args.train_size) for s, _ in points]
        ys = [r["metrics"][m] for _, r in points]
        lows = [r["metrics"][m] - r["intervals"][m][0] for _, r in points]
        highs = [r["intervals"][m][1] - r["metrics"][m] for _, r in points]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label="LoRA checkpoints of one run")
        for _, row in baselines:
            ax.axhline(row["metrics"][m], linestyle="--", linewidth=1, color="gray")
            ax.annotate(row["system"], (xs[0] if xs else 0, row["metrics"][m]), fontsize=8, va="bottom")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("training examples seen (log scale)")
        ax.set_ylabel(f"{m} (95% bootstrap interval)")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

"""The outputs of `tuneforge compare`: results.csv, results.md (with the budget every method shared) and
metric_vs_params.png (the metric against trainable parameters on a log axis)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch

COLUMNS = ("label", "method", "metric", "trainable", "trainable_pct", "total", "wall_time_s", "peak_mib",
           "adapter_bytes")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def budget_lines(cc, labels=None) -> list[str]:
    """What every method was given, so a reader knows the table's conditions (subsample, epochs, seed)."""
    from ..data import read_records

    first = cc.entries[0].run_config
    data, train = first.data, first.train
    lines = [f"- model: `{first.model.name}` ({first.model.kind}); task: `{first.task}`"]
    if data.train:
        total = len(read_records(data.train))
        used = min(total, data.limit_train or total)
        sub = f"{used:,} of {total:,} records (seeded subsample, shuffle_seed {data.shuffle_seed})" \
            if used < total else f"all {total:,} records"
        lines.append(f"- train: `{data.train}`: {sub}")
    if data.validation:
        total = len(read_records(data.validation))
        used = min(total, data.limit_eval or total)
        lines.append(f"- evaluated on `{data.validation}`: {used:,} of {total:,} records")
    steps = f"max_steps {train.max_steps}" if train.max_steps else f"{train.epochs} epoch(s)"
    jobs = getattr(cc, "jobs", 1)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else torch.get_num_threads()
    lines.append(f"- budget: {steps}, micro_batch_size {train.micro_batch_size} x grad_accum {train.grad_accum_steps}, "
                 f"max_length {data.max_length}, seed {train.seed}; "
                 + (f"{jobs} methods at a time, " if jobs > 1 else "")
                 + f"{threads} CPU thread(s) each, {os.cpu_count()} cores" + (", CUDA" if torch.cuda.is_available() else ""))
    if getattr(cc, "total_wall_s", None):
        lines.append(f"- whole comparison: {cc.total_wall_s / 60:.1f} minutes of wall time")
    from ..methods import method_for

    own = [f"{e.label}: lr {e.run_config.train.learning_rate:g}" for e in cc.entries
           if (labels is None or e.label in labels)
           and not method_for(e.run_config.method).fitted]  # fitted, not trained: no learning rate
    if own:
        lines.append("- learning rates: " + "; ".join(own))
    return lines


def table_rows(rows: list[dict]) -> list[dict]:
    return [{"label": r["label"], "method": r["method"], "metric": r["metric"], "trainable": r["trainable"],
             "trainable_pct": 100.0 * r["trainable"] / max(1, r["total"]), "total": r["total"],
             "wall_time_s": r["wall_time_s"], "peak_mib": r["peak_mib"], "adapter_bytes": r["adapter_bytes"]}
            for r in rows]


def markdown(rows: list[dict], cc) -> str:
    head = [f"# {cc.metric} against training cost", "", *budget_lines(cc, {r["label"] for r in rows}), "",
            f"| method | {cc.metric} | trainable params | % of total | wall time (s) | peak memory (MiB) | adapter size |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in table_rows(rows):
        peak = f"{r['peak_mib']:,.0f}" if r["peak_mib"] is not None else "n/a"
        head.append(f"| {r['label']} | {r['metric']:.4f} | {r['trainable']:,} | {r['trainable_pct']:.3f} | "
                    f"{r['wall_time_s']:.1f} | {peak} | {_human_bytes(r['adapter_bytes'])} |")
    head += ["", "Wall time covers training plus the final evaluation (for a classifier on frozen embeddings: "
             "embedding both splits and fitting). Peak memory is the process's resident high-water mark during "
             "that method. Trainable parameters include a new task head."]
    return "\n".join(head) + "\n"


def plot(rows: list[dict], cc, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [max(1, r["trainable"]) for r in rows]
    ys = [r["metric"] for r in rows]
    ax.scatter(xs, ys, s=30, zorder=3)
    for x, y, r in zip(xs, ys, rows):
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(cc.metric)
    ax.set_title(f"{cc.metric} against trainable parameters")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_reports(rows: list[dict], cc) -> dict:
    out = Path(cc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in table_rows(rows):
        writer.writerow({**r, "metric": f"{r['metric']:.6f}", "trainable_pct": f"{r['trainable_pct']:.6f}",
                         "wall_time_s": f"{r['wall_time_s']:.3f}",
                         "peak_mib": "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"})
    _write(out / "results.csv", buf.getvalue())
    _write(out / "results.md", markdown(rows, cc))
    return {"csv": out / "results.csv", "markdown": out / "results.md",
            "plot": plot(rows, cc, out / "metric_vs_params.png")}

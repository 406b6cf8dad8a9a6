"""The outputs of `tuneforge compare`: results.csv, results.md (with the budget every method shared) and
metric_vs_params.png (the metric against trainable parameters on a log axis)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch

COLUMNS = ("label", "method", "metric", "metric_low", "metric_high", "vs_best", "vs_best_low", "vs_best_high",
           "trainable", "trainable_pct", "total", "wall_time_s", "peak_mib", "adapter_bytes")
LOWER_IS_BETTER = {"eval_loss", "loss"}


def example_statistic(examples: dict | None, metric: str):
    """The bootstrap statistic of `metric` from a row's per-example outputs (see compare._example_scores)."""
    if not examples:
        return None
    if examples["kind"] == "classify" and metric in ("accuracy", "macro_f1"):
        from .classification import classification_statistics

        return classification_statistics(examples["gold"], examples["predicted"], examples["num_labels"])[metric]
    if examples["kind"] == "scored" and metric in ("spearman", "pearson"):
        from .sts import sts_statistics

        return sts_statistics(examples["cosine"], examples["gold"])[metric]
    return None


def _best(values: dict[str, float], metric: str) -> str | None:
    if not values:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(values, key=values.get)


def intervals(rows_per_run: list[list[dict]], metric: str, resamples: int, seed: int) -> dict[str, dict]:
    """label -> {"low", "high", "vs_best": {"label", "value", "low", "high"}} for the labels whose rows carry
    per-example outputs in every run (several runs = seeds: their mean is the statistic)."""
    from . import bootstrap

    labels = [r["label"] for r in rows_per_run[0]]
    stats, sizes = {}, {}
    for label in labels:
        examples = [next((r.get("examples") for r in rows if r["label"] == label), None) for rows in rows_per_run]
        parts = [example_statistic(e, metric) for e in examples]
        lengths = {len(e["gold"]) for e in examples if e}
        if all(p is not None for p in parts) and len(lengths) == 1:
            stats[label] = bootstrap.mean_over(parts) if len(parts) > 1 else parts[0]
            sizes[label] = lengths.pop()
    if len(set(sizes.values())) > 1:
        return {}
    out = {}
    points = {label: bootstrap.point(s, sizes[label]) for label, s in stats.items()}
    best = _best(points, metric)
    for label, statistic in stats.items():
        n = sizes[label]
        low, high = bootstrap.interval(statistic, n, resamples, seed)
        out[label] = {"low": low, "high": high}
        if best is not None and label != best:
            out[label]["vs_best"] = {"label": best, **bootstrap.paired_summary(statistic, stats[best], n, resamples,
                                                                              seed)}
    return out


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _count_records(path) -> int:
    """Records of a data file, or images of an image folder."""
    from ..data import read_records
    from ..data.images import folder_records, is_image_folder

    return len(folder_records(path)) if is_image_folder(path) else len(read_records(path))


def budget_lines(cc, labels=None) -> list[str]:
    """What every method was given, so a reader knows the table's conditions (subsample, epochs, seed)."""
    first = cc.entries[0].run_config
    data, train = first.data, first.train
    shared_model = (getattr(cc, "shared", None) or {}).get("model") or {}
    model_name = shared_model.get("name", first.model.name) if isinstance(shared_model, dict) else first.model.name
    lines = [f"- model: `{model_name}` ({first.model.kind}); task: `{first.task}`"]
    if data.train:
        total = _count_records(data.train)
        used = min(total, data.limit_train or total)
        sub = f"{used:,} of {total:,} records (seeded subsample, shuffle_seed {data.shuffle_seed})" \
            if used < total else f"all {total:,} records"
        per_class = getattr(first.task_config, "train_per_class", None)
        if per_class is not None:
            sub = f"{per_class} per class, drawn with each seed (task.train_per_class) from {total:,} records"
        lines.append(f"- train: `{data.train}`: {sub}")
    if data.validation:
        total = _count_records(data.validation)
        used = min(total, data.limit_eval or total)
        lines.append(f"- evaluated on `{data.validation}`: {used:,} of {total:,} records")
    for entry in cc.entries:
        model = entry.run_config.model.name
        if model != model_name and (labels is None or entry.label in labels):
            lines.append(f"- {entry.label} starts from `{model}`")
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


def table_rows(rows: list[dict], cc=None) -> list[dict]:
    """Report rows; with cc (its metric, resamples, bootstrap_seed), the bootstrap interval of each metric and the
    paired interval of its difference to the best method, where rows carry per-example outputs."""
    found = intervals([rows], cc.metric, getattr(cc, "resamples", 1000), getattr(cc, "bootstrap_seed", 0)) \
        if cc is not None and rows and getattr(cc, "resamples", 1000) else {}
    out = []
    for r in rows:
        iv = found.get(r["label"], {})
        vs = iv.get("vs_best", {})
        out.append({"label": r["label"], "method": r["method"], "metric": r["metric"],
                    "metric_low": iv.get("low"), "metric_high": iv.get("high"), "vs_best": vs.get("value"),
                    "vs_best_low": vs.get("low"), "vs_best_high": vs.get("high"), "trainable": r["trainable"],
                    "trainable_pct": 100.0 * r["trainable"] / max(1, r["total"]), "total": r["total"],
                    "wall_time_s": r["wall_time_s"], "peak_mib": r["peak_mib"], "adapter_bytes": r["adapter_bytes"]})
    return out


def _interval_cell(value: float, low, high) -> str:
    return f"{value:.4f}" if low is None else f"{value:.4f} [{low:.4f}, {high:.4f}]"


def _vs_best_cell(r: dict) -> str:
    if r.get("vs_best") is None:
        return "best" if r.get("metric_low") is not None else "-"
    return f"{r['vs_best']:+.4f} [{r['vs_best_low']:+.4f}, {r['vs_best_high']:+.4f}]"


def markdown(rows: list[dict], cc) -> str:
    head = [f"# {cc.metric} against training cost", "", *budget_lines(cc, {r["label"] for r in rows}), "",
            f"| method | {cc.metric} [95% CI] | vs best [paired 95% CI] | trainable params | % of total | "
            "wall time (s) | peak memory (MiB) | adapter size |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table_rows(rows, cc):
        peak = f"{r['peak_mib']:,.0f}" if r["peak_mib"] is not None else "n/a"
        head.append(f"| {r['label']} | {_interval_cell(r['metric'], r['metric_low'], r['metric_high'])} | "
                    f"{_vs_best_cell(r)} | {r['trainable']:,} | {r['trainable_pct']:.3f} | "
                    f"{r['wall_time_s']:.1f} | {peak} | {_human_bytes(r['adapter_bytes'])} |")
    head += ["", "Intervals: percentile bootstrap over the validation examples "
             f"({getattr(cc, 'resamples', 1000)} resamples, seed {getattr(cc, 'bootstrap_seed', 0)}); the difference "
             "to the best method is paired (the same resampled examples for both), so an interval that holds 0 means "
             "the two are not told apart by this validation set.",
             "", "Wall time covers training plus the final evaluation (for a classifier on frozen embeddings: "
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
    for r in table_rows(rows, cc):
        r = {k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) and k.startswith(("metric_", "vs_best"))
                 else v) for k, v in r.items()}
        writer.writerow({**r, "metric": f"{r['metric']:.6f}", "trainable_pct": f"{r['trainable_pct']:.6f}",
                         "wall_time_s": f"{r['wall_time_s']:.3f}",
                         "peak_mib": "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"})
    _write(out / "results.csv", buf.getvalue())
    _write(out / "results.md", markdown(rows, cc))
    return {"csv": out / "results.csv", "markdown": out / "results.md",
            "plot": plot(rows, cc, out / "metric_vs_params.png")}


def write_seed_reports(rows_per_seed: dict[int, list[dict]], cc, resamples: int = 1000,
                       bootstrap_seed: int = 0) -> tuple[list[dict], dict]:
    """OUTPUT_DIR/seeds.md and seeds.json of `compare --seeds`: per method the metric's mean +- std over seeds,
    each seed's value, the bootstrap interval of the seed-mean and the paired interval of its difference to the
    best method's seed-mean. Returns (method summaries, paths)."""
    import json
    import statistics

    seeds = list(rows_per_seed)
    runs = [rows_per_seed[s] for s in seeds]
    labels = [r["label"] for r in runs[0] if all(any(x["label"] == r["label"] for x in rows) for rows in runs)]
    found = intervals([[r for r in rows if r["label"] in labels] for rows in runs], cc.metric, resamples,
                      bootstrap_seed)
    methods = []
    for label in labels:
        values = [next(r["metric"] for r in rows if r["label"] == label) for rows in runs]
        iv = found.get(label, {})
        methods.append({"label": label, "mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "per_seed": dict(zip(seeds, values)), "low": iv.get("low"), "high": iv.get("high"),
                        "vs_best": iv.get("vs_best")})
    lines = [f"# {cc.metric} over seeds {', '.join(map(str, seeds))}", "", *budget_lines(cc), "",
             "| method | mean ± std | " + " | ".join(f"seed {s}" for s in seeds)
             + " | 95% CI of the mean | vs best [paired 95% CI] |",
             "|---|---:|" + "---:|" * len(seeds) + "---:|---:|"]
    for m in methods:
        ci = "-" if m["low"] is None else f"[{m['low']:.4f}, {m['high']:.4f}]"
        vs = m["vs_best"]
        vs_cell = ("best" if m["low"] is not None else "-") if vs is None else \
            f"{vs['value']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}]"
        lines.append(f"| {m['label']} | {m['mean']:.4f} ± {m['std']:.4f} | "
                     + " | ".join(f"{m['per_seed'][s]:.4f}" for s in seeds) + f" | {ci} | {vs_cell} |")
    lines += ["", "std: sample standard deviation over the seeds (n - 1). Intervals: percentile bootstrap over the "
              f"validation examples ({resamples} resamples, seed {bootstrap_seed}) of the mean over seeds; the "
              "difference to the best method is paired over the same examples."]
    out = Path(cc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "seeds.md", "\n".join(lines) + "\n")
    _write(out / "seeds.json", json.dumps({"metric": cc.metric, "seeds": seeds, "methods": methods}, indent=2))
    return methods, {"markdown": out / "seeds.md", "json": out / "seeds.json"}

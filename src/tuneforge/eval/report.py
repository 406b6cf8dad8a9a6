"""Results on disk: a Markdown table per task (systems as rows, metrics as columns), the same rows as JSON,
and every example's prediction as JSON Lines, so a number in the table can be traced to the replies behind it.
Files are written to a temporary name and renamed, so a crash never leaves a half-written table."""
from __future__ import annotations

import re

from ..io.text_files import write_jsonl, write_text  # noqa: F401 - eval's writers

LOWER_IS_BETTER = {"loss", "perplexity"}
COLUMN_ORDER = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "accuracy", "f1", "loss", "perplexity",
                "reward")


def adapter_dir_name(path, prefix: str) -> str:
    """One adapter name per adapter directory, so a directory is loaded into the model once however often used."""
    import hashlib
    from pathlib import Path

    return f"{prefix}-" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def metric_columns(rows: list[dict]) -> list[str]:
    present = {k for row in rows for k in row["metrics"]}
    return [c for c in COLUMN_ORDER if c in present] + sorted(present - set(COLUMN_ORDER))


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _cell(row: dict, column: str) -> str:
    value = row["metrics"].get(column)
    low, high = row.get("intervals", {}).get(column, (None, None))
    if value is None or low is None or low != low:  # no interval (or NaN)
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def _difference_cell(difference: dict | None) -> str:
    if not difference:
        return "-"
    return f"{difference['value']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]"


def results_markdown(rows: list[dict]) -> str:
    """One table per task: | system | n | metric ... |, with the direction of each metric in the header and a
    bootstrap 95% interval in brackets; then, when systems were compared, the paired interval of each system's
    difference to the task's first system."""
    out = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task]
        columns = metric_columns(task_rows)
        arrows = [f"{c} {'↓' if c in LOWER_IS_BETTER else '↑'}" for c in columns]
        out.append(f"### {task}\n")
        out.append("| system | n | " + " | ".join(arrows) + " |")
        out.append("|---|---:|" + "---:|" * len(columns))
        for row in task_rows:
            cells = [_cell(row, c) for c in columns]
            out.append(f"| {row['system']} | {row['n']} | " + " | ".join(cells) + " |")
        out.append("")
        compared = [row for row in task_rows if row.get("vs_first")]
        if compared:
            out.append(f"Difference to {compared[0]['vs_first']['system']} on the same examples (paired bootstrap "
                       "95% interval):\n")
            out.append("| system | " + " | ".join(columns) + " |")
            out.append("|---|" + "---:|" * len(columns))
            for row in compared:
                out.append(f"| {row['system']} | " + " | ".join(_difference_cell(row["vs_first"].get(c))
                                                              for c in columns) + " |")
            out.append("")
    return "\n".join(out)


def change_markdown(rows: list[dict]) -> str:
    """| probe | metric | before | after | change | for forgetting reports (rows from forgetting.compare)."""
    out = ["| probe | system | metric | before | after | change |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        better = "lower" if r["metric"] in LOWER_IS_BETTER else "higher"
        out.append(f"| {r['probe']} | {r['system']} | {r['metric']} ({better} is better) | {_fmt(r['before'])} | "
                   f"{_fmt(r['after'])} | {r['change']:+.3f} |")
    return "\n".join(out) + "\n"

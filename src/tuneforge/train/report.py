"""What a run shows and leaves behind: a tqdm bar, `metrics.jsonl` and `loss.png`.

metrics.jsonl has one JSON object per line. Train lines (every `log_every` steps):
    step, epoch (fractional), loss (target-weighted mean over the steps since the last line), lr, grad_norm,
    tokens (non-padding input tokens seen so far), tokens_per_s (over the steps since the last line), elapsed_s
Eval lines: step, epoch, elapsed_s and whatever the task's evaluate returned (SFT: eval_loss, perplexity).
A train line is recognised by its "loss" key, an eval line by having no "lr".

The history (the same dicts) travels inside checkpoints, so a resumed run rewrites the file from it and the
file never holds lines of steps that were lost with an interruption.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


class Reporter:
    """Progress bar plus the metrics file; `history` is the list of every record written so far."""

    def __init__(self, output_dir: str | os.PathLike, history: list[dict], total: int, initial: int, progress: bool):
        from tqdm.auto import tqdm

        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.plot_path = self.output_dir / "loss.png"
        self.history = list(history)
        tmp = self.metrics_path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        os.replace(tmp, self.metrics_path)
        self._file = open(self.metrics_path, "a")
        self.bar = tqdm(total=total, initial=initial, disable=not progress, unit="step", dynamic_ncols=True)

    def record(self, record: dict) -> None:
        self.history.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def step(self, loss: float, lr: float, tokens_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        self.bar.update(1)

    def message(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        self._file.close()


def plot_losses(history: list[dict], path: str | os.PathLike) -> Path | None:
    """Train loss (line) and eval loss (markers) against step; None when there is nothing to plot.
    Uses the Agg canvas directly, so no global matplotlib backend is switched in the caller's process."""
    from matplotlib.ticker import MaxNLocator

    train = [(r["step"], r["loss"]) for r in history if "loss" in r and _finite(r["loss"])]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r and _finite(r["eval_loss"])]
    if not train and not evals:
        return None
    fig, (ax,) = figure()
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", markersize=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    return save_figure(fig, [ax], path, legend_size=None)


def figure(rows: int = 1, size: tuple = (7, 4)):
    """(figure, axes stacked in `rows`) on the Agg canvas directly, so no global matplotlib backend is switched
    in the caller's process."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]


def save_figure(fig, axes, path: str | os.PathLike, legend_size=8) -> Path:
    """Grid and legend on each axis, tight layout, written to path through a temporary file (a reader never sees
    half a PNG)."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

"""WiSE-FT: interpolate the fine-tuned weights back toward the pretrained ones (Wortsman et al. 2022, "Robust
fine-tuning of zero-shot models", https://arxiv.org/abs/2109.01903):

    theta(alpha) = (1 - alpha) * theta_pre + alpha * theta_ft

alpha = 0 is the base model, alpha = 1 the fine-tune; in between, the fine-tuned task usually keeps most of its
gain while abilities the fine-tune eroded (a shift or probe task) come back. For an adapter, theta_ft is the
base with the adapter merged, so theta(alpha) = theta_pre + alpha * delta: the adapter's weight delta scaled by
alpha (for LoRA exactly a lora_alpha scaled by alpha). Working on merged weights, not on each method's own
scale, keeps this exact for every mergeable method: PiSSA (whose base is a residual), DoRA (whose magnitude
normalisation is not linear in the LoRA scale), Delta-LoRA (which moves W itself), full and partial
fine-tuning. Only the tensors the fine-tune changed are kept twice; methods that do not merge (prompt tuning)
raise NotMergeable.

`interpolate(config, adapter=..., alphas=...)` scores eval.tasks (the fine-tuned task) and eval.probes (the
shift/probe tasks) at each alpha and writes interpolate.md / .json and a PNG of both curves; `save_alpha` writes
the model at that alpha as a plain transformers checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import resolve_config
from ..config.eval import EvalSystem
from ..errors import ConfigError
from ..io import atomic_dir, load_adapter
from ..methods import unload
from ..models import load_model_for
from .report import results_markdown, write_text
from .systems import load_base, score_systems


class WeightInterpolation:
    """Holds theta_pre and theta_ft of the tensors that differ, and sets a model to theta(alpha) in place."""

    def __init__(self, model, pretrained: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor]):
        self.model = model
        self.pairs = {}
        for name in dict(model.named_parameters()):
            if name in finetuned and not torch.equal(pretrained[name], finetuned[name]):
                self.pairs[name] = (pretrained[name], finetuned[name])
        if not self.pairs:
            raise ConfigError("the fine-tuned weights equal the pretrained ones: nothing to interpolate")
        self.alpha = 1.0

    @classmethod
    def from_adapter(cls, model, adapter_dir) -> "WeightInterpolation":
        """theta_pre = the model as loaded; theta_ft = the model with the adapter merged in (left at alpha=1)."""
        pretrained = _snapshot(model)
        load_adapter(model, adapter_dir, adapter_name="wise-ft",
                     allow_pickle=getattr(model, "tuneforge_allow_pickle", False))
        unload(model, merge=True)
        return cls(model, pretrained, _snapshot(model))

    @classmethod
    def from_models(cls, model, finetuned_model) -> "WeightInterpolation":
        """theta_pre = `model`; theta_ft = a fully fine-tuned model of the same architecture."""
        own = dict(model.named_parameters())
        other = dict(finetuned_model.named_parameters())
        missing = [n for n in own if n not in other or other[n].shape != own[n].shape]
        if missing:
            raise ConfigError(f"the fine-tuned model does not match the base: {missing[0]!r} differs or is missing")
        pretrained = _snapshot(model)
        finetuned = {n: p.detach().to(own[n].dtype).clone() for n, p in other.items() if n in own}
        return cls(model, pretrained, finetuned)

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        """Write theta(alpha) into the model (torch.lerp: exactly theta_pre at 0 and theta_ft at 1)."""
        params = dict(self.model.named_parameters())
        for name, (pre, ft) in self.pairs.items():
            params[name].copy_(torch.lerp(pre, ft, float(alpha)))
        self.alpha = alpha


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def parse_alphas(text: str | list) -> list[float]:
    """"0,0.25,0.5" -> [0.0, 0.25, 0.5]; each alpha must be a number (usually in [0, 1])."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        alphas = [float(p) for p in parts if str(p).strip() != ""]
    except ValueError:
        raise ConfigError(f"alphas must be numbers separated by commas, got {text!r}", key="alphas") from None
    if not alphas:
        raise ConfigError("give at least one alpha", key="alphas")
    return alphas


def plot_curves(rows: list[dict], task_metric: tuple[str, str], probe_metric: tuple[str, str] | None,
                path: Path) -> Path:
    """A PNG of the fine-tuned task's metric and the probe's metric against alpha (two y axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(task, metric):
        points = sorted((r["alpha"], r["metrics"][metric]) for r in rows if r["task"] == task and metric in r["metrics"])
        return [a for a, _ in points], [v for _, v in points]

    fig, left = plt.subplots(figsize=(6, 4))
    x, y = curve(*task_metric)
    left.plot(x, y, "o-", color="tab:blue", label=f"{task_metric[0]} {task_metric[1]}")
    left.set_xlabel("alpha  (0 = pretrained, 1 = fine-tuned)")
    left.set_ylabel(f"{task_metric[0]}: {task_metric[1]}", color="tab:blue")
    handles = left.get_legend_handles_labels()
    if probe_metric is not None:
        right = left.twinx()
        x, y = curve(*probe_metric)
        right.plot(x, y, "s--", color="tab:red", label=f"{probe_metric[0]} {probe_metric[1]}")
        right.set_ylabel(f"{probe_metric[0]}: {probe_metric[1]}", color="tab:red")
        more = right.get_legend_handles_labels()
        handles = (handles[0] + more[0], handles[1] + more[1])
    left.legend(*handles, loc="best", fontsize=8)
    left.set_title("WiSE-FT: theta(alpha) = (1 - alpha) theta_pre + alpha theta_ft")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _headline(tasks) -> tuple[str, str] | None:
    if not tasks:
        return None
    task = tasks[0]
    metrics = task.scored_metrics()
    preferred = [m for m in ("rougeL", "bleu", "accuracy", "loss") if m in metrics]
    return task.name, (preferred or metrics)[0]


def interpolate(config_or_path=None, overrides=(), *, adapter=None, finetuned=None, alphas="0,0.25,0.5,0.75,1",
                save_alpha: float | None = None, save_dir=None, force: bool = False, out_dir=None, log=print) -> dict:
    """Score eval.tasks and eval.probes at each alpha; write interpolate.md/.json/.png under out_dir (default
    output_dir/eval); with save_alpha and save_dir, also save the model at that alpha (a non-empty save_dir is
    only replaced with force=True).

    The fine-tune is `adapter` (an adapter directory; default output_dir/adapter) or `finetuned` (a fully
    fine-tuned model: packaged alias, local directory or hub id)."""
    cfg = resolve_config(config_or_path, overrides)
    alpha_list = parse_alphas(alphas)
    tasks, probes = list(cfg.eval.tasks), list(cfg.eval.probes)
    if not tasks and not probes:
        raise ConfigError("nothing to score: add eval.tasks (the fine-tuned task) and eval.probes", key="eval.tasks")
    if save_alpha is not None and save_dir is None:
        raise ConfigError("save_alpha needs save_dir (where to write the model)", key="save_dir")
    if save_dir is not None and Path(save_dir).exists() and any(Path(save_dir).iterdir()) and not force:
        raise ConfigError(f"{save_dir} already exists and is not empty; pass --force to replace it", key="save_dir")
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "eval"
    model, tokenizer = load_base(cfg, quantization=None)  # WiSE-FT mixes dense weights: the base loads dense
    if finetuned is not None:
        weights = WeightInterpolation.from_models(model, load_model_for(cfg.model, name=finetuned, quantization=None))
    else:
        adapter = adapter or Path(cfg.output_dir) / "adapter"
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"no adapter at {adapter}: pass --adapter or --finetuned, or train the run first")
        weights = WeightInterpolation.from_adapter(model, adapter)
    rows = []
    for alpha in alpha_list:
        weights.set(alpha)
        system = EvalSystem(name=f"alpha={alpha:g}")
        for row in score_systems(model, tokenizer, cfg.eval, tasks + probes, [system],
                                 out / "predictions" / "interpolate", log=log):
            rows.append(dict(row, alpha=alpha))
    markdown = results_markdown(rows)
    paths = {"markdown": str(write_text(out / "interpolate.md", markdown)),
             "json": str(write_text(out / "interpolate.json", json.dumps({"model": cfg.model.name, "rows": rows},
                                                                         indent=2)))}
    headline = _headline(tasks) or _headline(probes)
    paths["plot"] = str(plot_curves(rows, headline, _headline(probes) if tasks else None, out / "interpolate.png"))
    if save_alpha is not None:
        weights.set(save_alpha)
        with atomic_dir(save_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        paths["model"] = str(save_dir)
        log(f"saved the model at alpha={save_alpha:g} to {save_dir}")
    return {"rows": rows, "markdown": markdown, "paths": paths}

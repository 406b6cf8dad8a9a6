"""Pairwise accuracy on the HH-RLHF validation pairs of DPO, ORPO, SimPO, CPO and KTO next to the untouched model.

Each method is one real run of its shipped config (configs/<name>_smollm2_hh_rlhf.yaml: same adapter, learning rate
and schedule), all shrunk by the same OVERRIDES to fit the loaded 2-core CPU of this session (about a quarter of
one core per job): 16 training pairs (4 steps of 4), 32 validation pairs, evaluated once at the end, the last 48
prompt tokens and 128 tokens per row; `untouched` scores the same validation pairs with
SmolLM2-135M-Instruct as shipped (a fresh LoRA adapter is exactly the base: B = 0). Runs go strictly one after
another; each result is merged into benchmarks/results/preference_hh.json, so the runs can be split over several
calls. Prints the markdown table.

    OMP_NUM_THREADS=1 python benchmarks/preference_hh.py [untouched dpo orpo simpo cpo kto]
    (default: all, in that order; --table: only print the table; one thread is several times faster than two on
    a loaded 2-core machine)

Columns (tuneforge.train.tasks.preference.pair_metrics): the policy's own preference (summed and per-token reply
log-probability, chosen vs rejected; the same measure for every row) and each method's implicit-reward accuracy.
Data: Anthropic HH-RLHF (MIT; the harmless half holds offensive red-team dialogues), ../shared/data/hh_rlhf.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "preference_hh.json"
METHODS = ("dpo", "orpo", "simpo", "cpo", "kto")
OVERRIDES = ("data.limit_train=16", "data.limit_eval=32", "data.max_length=128", "task.max_prompt_length=48",
             "train.warmup_steps=1", "train.eval_every=null", "train.save_every=4")


def config(name: str) -> Path:
    return REPO / "configs" / f"{name}_smollm2_hh_rlhf.yaml"


def untouched() -> dict:
    """The validation metrics of the model before any training: the same pairs, scored by ORPO's evaluation (no
    reference pass; its log-prob accuracies are the policy's own, here the base's)."""
    import torch

    from tuneforge.methods import add_adapter
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.registry import TASKS
    from tuneforge.train.api import resolve_config
    from tuneforge.train.loop import evaluate

    cfg = resolve_config(str(config("orpo")), OVERRIDES)
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.model.name)
    add_adapter(model, cfg.method)  # B = 0: exactly the base's outputs
    task = TASKS.get("orpo")()
    _, evals = task.prepare(cfg, load_tokenizer(cfg.model.name))
    return evaluate(model, task, evals, cfg.train)


def trained(name: str) -> dict:
    from tuneforge.train import train

    result = train(str(config(name)), [*OVERRIDES, f"output_dir=runs/preference-hh/{name}"], progress=False,
                   resume=False)
    return {**result.eval_metrics, "steps": result.steps}


def table(results: dict) -> str:
    rows = ["| model | pairwise accuracy: log-prob (sum) | per-token log-prob | implicit reward | eval pairs | "
            "train steps | wall min |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("untouched", *METHODS):
        r = results.get(name)
        if r is None:
            continue
        reward = "-" if name == "untouched" else f"{r['reward_accuracy']:.3f}"
        rows.append(f"| {name} | {r['logp_accuracy']:.3f} | {r['avg_logp_accuracy']:.3f} | {reward} | "
                    f"{r['eval_pairs']} | {r.get('steps', 0)} | {r['wall_s'] / 60:.1f} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    names = [] if argv == ["--table"] else (argv or ["untouched", *METHODS])
    for name in names:
        if name != "untouched" and name not in METHODS:
            raise SystemExit(f"unknown name {name!r}: choose from untouched {' '.join(METHODS)}")
        start, load = time.perf_counter(), os.getloadavg()[0]
        metrics = untouched() if name == "untouched" else trained(name)
        results[name] = {**metrics, "wall_s": time.perf_counter() - start, "load_1min_at_start": load}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1:])

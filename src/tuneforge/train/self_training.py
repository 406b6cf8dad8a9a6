"""Self-training on pseudo-labels (`task.self_training`): weak supervision when labelled records are few.

    round 0:  train on the labelled records (the supervised baseline, evaluated like any run)
    round r:  the model of round r-1 predicts every unlabelled record; the predictions at least `threshold`
              confident (optionally class-balanced, capped) become labels; train on labelled + pseudo-labelled
              records, from the initial weights (`reinit`, default) or on from round r-1's, for train's steps
              or `max_steps`

Each round is a normal `run_training` into its own folder, so it checkpoints and resumes exactly as any run:

    output_dir/rounds/round-<r>/   config.yaml (copy: its checkpoints keep it), checkpoints/, metrics.jsonl,
                                   loss.png, pseudo_labels.json (r >= 1: the kept labels and the round's counts,
                                   written before the round trains, reused on resume), round.json (last: done)
    output_dir/self_training.jsonl one line per finished round (rewritten from the round.json files)

With train.report_to, each round's training reports to its own tracker run (the round's folder), and the round
records go to one more at output_dir, step = round number (`round_scalars`): the pseudo-label counts, their
agreement with the hidden labels and the validation metrics after the round. A resumed run sends every round
again (a fresh TensorBoard folder, a new MLflow / W&B run).

The final adapter (output_dir/adapter) is written by `train()` only after the last round. A run started again
reloads each finished round from its last checkpoint (seconds) and continues in the first unfinished one.

What a task implements to self-train (ClassifyTask and ImageClassifyTask do), declared on BaseTask: a
`self_training` field in its config, `self_trains = True`,
    encode_unlabeled(records, tokenizer, run_cfg, source) -> (examples, hidden labels: list[int | None])
    logits(model, batch) -> (batch, classes) tensor
    example_key(example) -> hashable or None       pool records equal to a labelled one are left out
    read_unlabeled(run_cfg, settings) -> (records, source)   default: rows of the data source
    pseudo_example(example, label) -> example      how a pool example trains (images: augmented)
    labels                              the class names, in head-output order
and examples keep their class index under "label" (the pseudo-label replaces it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from . import launcher
from .loop import TrainResult, run_training
from .pseudo_labels import agreement, class_counts, predict_proba, select
from .resume_check import check_resume
from .tracking import Trackers

ROUNDS = "rounds"
LOG = "self_training.jsonl"
PSEUDO = "pseudo_labels.json"
DONE = "round.json"


@dataclasses.dataclass
class Pool:
    """The unlabelled examples, their hidden labels (None where a record has none) and what was left out."""

    examples: list[dict]
    hidden: list[int | None]
    source: str
    records: int
    duplicates: int


def settings(run_cfg):
    """The run's SelfTrainingConfig, or None when the task does not self-train."""
    return getattr(run_cfg.task_config, "self_training", None)


def round_dir(output_dir, r: int) -> Path:
    return Path(output_dir) / ROUNDS / f"round-{r}"


def prepare_pool(task, run_cfg, tokenizer, train_examples: list) -> Pool:
    """Read, check and encode the unlabelled records, before anything trains or is written: a missing or empty
    source, a record without the input fields, or a label the task does not declare is an error here."""
    from ..data.formatting import select_records

    st = settings(run_cfg)
    if not task.self_trains:
        raise ConfigError(f"task {run_cfg.task!r} cannot self-train", key="task.self_training")
    if launcher.launched_world_size() > 1:
        raise ConfigError("self-training runs in one process only", key="task.self_training")
    try:
        records, source = task.read_unlabeled(run_cfg, st)
    except DataError as err:
        if "empty" in err.message:
            raise DataError("the unlabelled records (task.self_training.unlabeled) are empty: there is nothing "
                            "to pseudo-label", file=err.file, key="task.self_training.unlabeled") from None
        raise
    records = list(records)
    if not records:
        raise DataError("the unlabelled records (task.self_training.unlabeled) are empty: there is nothing to "
                        "pseudo-label", file=source, key="task.self_training.unlabeled")
    examples, hidden = task.encode_unlabeled(records, tokenizer, run_cfg, source)
    duplicates = 0
    if examples and task.example_key(examples[0]) is not None:
        seen = {task.example_key(ex) for ex in train_examples}
        kept = [i for i, ex in enumerate(examples) if task.example_key(ex) not in seen]
        duplicates = len(examples) - len(kept)
        examples, hidden = [examples[i] for i in kept], [hidden[i] for i in kept]
    if not examples:
        raise DataError(f"all {len(records)} unlabelled records are also labelled training records: there is "
                        "nothing to pseudo-label", file=source, key="task.self_training.unlabeled")
    if st.limit is not None:  # drawn after the labelled ones are left out: a draw by the same seed as
        # data.limit_train would otherwise repeat the labelled draw (random.sample's first picks agree)
        keep = select_records(list(range(len(examples))), st.limit, run_cfg.data.shuffle_seed)
        examples, hidden = [examples[i] for i in keep], [hidden[i] for i in keep]
    return Pool(examples, hidden, str(source), len(records), duplicates)


def check_resume_rounds(cfg_data: dict, output_dir, processes: int = 1) -> list[str]:
    """check_resume for every round folder that holds checkpoints: a config change that cannot resume exactly
    is refused before anything is written; returns the harmless changes applied. A change of the self-training
    settings is harmless to round 0 (its checkpoints resume), not to the later rounds."""
    applied: list[str] = []
    root = Path(output_dir) / ROUNDS
    for folder in sorted(root.glob("round-*")) if root.is_dir() else []:
        # round 0 trains on the labelled records alone: no self-training setting changes it, so a run with other
        # settings (threshold, pool, rounds...) reuses a finished supervised round (copied into its output_dir)
        harmless = ("task.self_training",) if folder.name == "round-0" else ()
        for line in check_resume(cfg_data, folder, processes, harmless)[1]:
            if line not in applied:
                applied.append(line)
    return applied


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _write_log(output_dir: Path, records: list[dict]) -> Path:
    path = output_dir / LOG
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    return path


def _snapshot(model) -> dict:
    """Every parameter and buffer, copied to the CPU: what `reinit` puts back before each round (methods that
    change frozen weights while training, Delta-LoRA, are covered too)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _pseudo_label(model, task, pool: Pool, st, names: list[str], batch_size: int, amp, progress: bool) -> dict:
    """The kept pseudo-labels and the round's counts, from the current model's predictions over the pool."""
    started = time.perf_counter()
    probs = predict_proba(model, task, pool.examples, batch_size, amp=amp, progress=progress)
    confidence, predicted = probs.max(-1)
    keep, labels = select(probs, st.threshold, st.balance, st.max_per_round)
    names = names or [str(c) for c in range(probs.shape[-1])]
    predicted = predicted.tolist()
    pool_accuracy, hidden_count = agreement(predicted, pool.hidden)
    pseudo_accuracy, _ = agreement(labels, [pool.hidden[i] for i in keep])
    above = sum(1 for c in confidence.tolist() if c >= st.threshold)
    return {
        "pool": len(pool.examples), "above_threshold": above, "pseudo_labels": len(keep),
        "per_class": class_counts(labels, names), "hidden_labels": hidden_count,
        "pseudo_accuracy": pseudo_accuracy, "pool_accuracy": pool_accuracy,
        "mean_confidence": float(confidence[keep].mean()) if keep else None,
        "predict_s": round(time.perf_counter() - started, 2),
        "kept": [[i, y, round(float(confidence[i]), 6)] for i, y in zip(keep, labels)],
    }


def run(model, task, train_examples: list, eval_examples: list, run_cfg, output_dir, pool: Pool, *,
        resume: bool = True, progress: bool = True) -> TrainResult:
    """Round 0 on the labelled examples, then `rounds` rounds on labelled + pseudo-labelled ones; returns the
    last round's TrainResult with the steps and time of all rounds and the round records (`self_training`)."""
    st, cfg = settings(run_cfg), run_cfg.train
    out = Path(output_dir)
    if not resume:
        shutil.rmtree(out / ROUNDS, ignore_errors=True)  # --no-resume: no stale round may be reused
    device = next(model.parameters()).device
    amp = partial(torch.autocast, device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext
    names = [str(n) for n in task.labels or []]
    initial = _snapshot(model) if st.reinit else None
    trackers = Trackers(cfg, out)
    try:
        return _rounds(model, task, train_examples, eval_examples, cfg, st, out, pool, initial, names, amp,
                       trackers, resume, progress)
    except BaseException as err:
        trackers.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


def round_scalars(record: dict) -> dict:
    """A round record as tracker tags: self_training/<count or share>, .../pseudo_labels/<class>, .../eval/<m>."""
    keys = ("labelled", "pool", "above_threshold", "pseudo_labels", "pseudo_accuracy", "pool_accuracy",
            "mean_confidence", "examples", "steps", "wall_time_s", "predict_s")
    out = {f"self_training/{k}": record.get(k) for k in keys}
    out.update({f"self_training/pseudo_labels/{name}": n for name, n in (record.get("per_class") or {}).items()})
    out.update({f"self_training/eval/{k}": v for k, v in (record.get("eval") or {}).items()})
    return out


def _rounds(model, task, train_examples, eval_examples, cfg, st, out: Path, pool: Pool, initial, names, amp,
            trackers: Trackers, resume: bool, progress: bool) -> TrainResult:
    records: list[dict] = []
    steps, wall = 0, 0.0
    result: TrainResult | None = None
    for r in range(st.rounds + 1):
        folder = round_dir(out, r)
        folder.mkdir(parents=True, exist_ok=True)
        if (out / "config.yaml").is_file():  # each round's checkpoints keep the config they were trained under
            tmp = folder / ".config.yaml.tmp"
            shutil.copyfile(out / "config.yaml", tmp)
            os.replace(tmp, folder / "config.yaml")
        examples, info = train_examples, {"pool": len(pool.examples), "pseudo_labels": 0}
        if r > 0:
            cached = folder / PSEUDO
            if resume and cached.is_file():
                info = json.loads(cached.read_text())
            else:
                info = _pseudo_label(model, task, pool, st, names, cfg.micro_batch_size, amp, progress)
                _write_json(cached, info)
            examples = train_examples + [task.pseudo_example(pool.examples[i], y) for i, y, _ in info["kept"]]
            if initial is not None:
                model.load_state_dict(initial)
            shown = ", ".join(f"{k} {v}" for k, v in info["per_class"].items())
            accuracy = (f"; {info['pseudo_accuracy']:.3f} agree with the hidden labels"
                        if info.get("pseudo_accuracy") is not None else "")
            print(f"self-training round {r}: {info['pseudo_labels']} of {info['pool']} unlabelled records "
                  f"pseudo-labelled ({shown}){accuracy}")
        round_cfg = dataclasses.replace(cfg, max_steps=st.max_steps) if r > 0 and st.max_steps else cfg
        result = run_training(model, task, examples, eval_examples, round_cfg, folder, resume=resume,
                              progress=progress)
        steps, wall = steps + result.steps, wall + result.wall_time_s
        record = {"round": r, "labelled": len(train_examples),
                  **{k: v for k, v in info.items() if k != "kept"}, "examples": len(examples),
                  "steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
                  "eval": {k: v for k, v in result.eval_metrics.items() if isinstance(v, (int, float))}}
        _write_json(folder / DONE, record)
        records.append(record)
        _write_log(out, records)
        trackers.log_values(r, round_scalars(record))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record["eval"].items())
        print(f"self-training round {r} done: {shown or 'no validation set'}")
    assert result is not None
    trackers.close("FINISHED")
    return dataclasses.replace(result, steps=steps, wall_time_s=wall, self_training=records)

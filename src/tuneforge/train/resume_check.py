"""Resume only what can resume exactly: the config a checkpoint was trained under against the one now given.

A checkpoint holds the weights, Adam moments, lr step and data position of one run config. Resuming it under a
new learning rate, batch size, seed, schedule, method (a LoRA rank) or data set would continue on the old
schedule with mismatched state, and config.yaml would record values the run never used; those changes are
refused, naming each key and the `--no-resume` way to start over. Changes that only touch how the run is watched
or where it runs (evaluation, logging and checkpoint frequency, trackers, callbacks, early stopping, save_best,
the device, the validation set) are applied and named. More steps (max_steps, epochs) are applied when the schedule is constant and its warmup does not depend on
the total; micro_batch_size may change with the number of processes as long as the global batch
(micro_batch_size x processes) stays the same.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from . import checkpoint as ckpt

# key paths (or whole sections) whose change cannot alter the updates the resumed run computes
HARMLESS = ("output_dir", "model.device", "model.allow_pickle", "eval", "data.validation", "data.limit_eval", "data.warn_dropped_share",
            "train.eval_every", "train.eval_batches", "train.save_every", "train.keep_last", "train.log_every",
            "train.gradient_checkpointing", "train.gradient_checkpointing_layers", "train.recompute_norms",
            "train.release_memory",
            "train.compile", "train.report_to", "train.mlflow_tracking_uri", "train.mlflow_experiment", "train.wandb",
            "train.callbacks", "train.early_stopping", "train.save_best", "train.save_best_mode",
            "task.self_training.rounds")  # a round trains the same whatever comes after it
LENGTH = ("train.max_steps", "train.epochs")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 1}} -> {"train.seed": 1}; lists stay whole values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _harmless(key: str, extra: tuple = ()) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS + tuple(extra))


def compare(old: dict, new: dict, *, step: int = 0, old_processes: int = 1, new_processes: int = 1,
            harmless: tuple = ()) -> tuple[list[str], list[str]]:
    """(applied, refused): one "key: old -> new" line per changed key. `old` and `new` are resolved configs as
    plain data (dump_config); keys the old config does not have (written by an older version) are not compared.
    `harmless`: more key paths whose change this checkpoint does not depend on."""
    before, after = flatten(old), flatten(new)
    applied, refused = [], []
    constant = (after.get("train.lr_schedule") == "constant" and not after.get("train.warmup_ratio")
                and before.get("train.lr_schedule") == "constant")
    for key in sorted(after):
        if key not in before or key == "train.micro_batch_size":
            continue
        a, b = before[key], after[key]
        if a == b:
            continue
        line = f"{key}: {a!r} -> {b!r}"
        if _harmless(key, harmless):
            applied.append(line)
        elif key in LENGTH and constant and (after.get("train.max_steps") or step) >= step:
            applied.append(line + " (constant learning rate: more steps continue the same schedule)")
        elif key == "train.epochs" and before.get("train.max_steps") and after.get("train.max_steps"):
            applied.append(line + " (ignored: max_steps is set)")
        elif key in LENGTH:
            refused.append(line + " (the learning-rate schedule spans the total number of steps)")
        else:
            refused.append(line)
    micro_a, micro_b = before.get("train.micro_batch_size"), after.get("train.micro_batch_size")
    if micro_a is not None and (micro_a, old_processes) != (micro_b, new_processes):
        line = (f"train.micro_batch_size x processes: {micro_a} x {old_processes} -> {micro_b} x {new_processes}")
        if micro_a * old_processes == micro_b * new_processes:
            applied.append(line + f" (the same global batch of {micro_b * new_processes})")
        else:
            refused.append(line + " (the global batch changes)")
    return applied, refused


def saved_config(checkpoint: Path, output_dir: Path) -> dict | None:
    """The config a checkpoint was trained under: its own copy, else output_dir/config.yaml; None if neither."""
    for path in (checkpoint / ckpt.CONFIG, output_dir / "config.yaml"):
        if path.is_file():
            data = yaml.safe_load(path.read_text())
            if isinstance(data, dict):
                return data
    return None


def check_resume(cfg_data: dict, output_dir: Path, processes: int = 1, harmless: tuple = ()
                 ) -> tuple[Path | None, list[str]]:
    """(the checkpoint a resume will start from, the harmless changes it applies); raises ConfigError listing
    every change that cannot resume exactly (`harmless`: as for compare)."""
    latest = ckpt.latest_checkpoint(output_dir / "checkpoints", warn=False)
    if latest is None:
        return None, []
    old = saved_config(latest, output_dir)
    if old is None:
        return latest, []
    state = json.loads((latest / "state.json").read_text())
    applied, refused = compare(old, cfg_data, step=int(state.get("global_step", 0)),
                               old_processes=int(state.get("world_size", 1)), new_processes=processes,
                               harmless=harmless)
    if refused:
        shown = "\n  ".join(refused)
        raise ConfigError(
            f"output_dir {output_dir} holds checkpoint {latest.name} of a run with another config, which cannot "
            f"resume exactly under these changes:\n  {shown}\nrestore those values to resume, or start over with "
            f"`tuneforge train ... --no-resume` (train(..., resume=False)), which deletes the checkpoints",
            key=refused[0].split(":")[0].split(" ")[0])
    return latest, applied

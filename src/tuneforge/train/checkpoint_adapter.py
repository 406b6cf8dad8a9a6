"""A step checkpoint as an adapter folder, so any point of a run can be scored by what reads adapters
(`tuneforge eval`, `generate`, `merge`): e.g. a learning curve (training examples seen vs the metric) from the
checkpoints of one run instead of one run per point.

A checkpoint (checkpoint.py) holds the trainable parameters under the training model's parameter names and the
run config they were trained under (config.yaml). Rebuilding that run's model and method from the config and
copying the tensors in gives exactly the adapter the run would have saved had it stopped at that step.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import resolve_config
from ..errors import TuneforgeError
from ..models.state_copy import copy_checked
from . import api
from . import checkpoint as ckpt


def default_out(checkpoint: Path) -> Path:
    """OUTPUT_DIR/adapter-step-N beside OUTPUT_DIR/adapter: outside checkpoints/, which keep_last prunes."""
    return checkpoint.parent.parent / f"adapter-{checkpoint.name}"


def adapter_from_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write the adapter of checkpoint OUTPUT_DIR/checkpoints/step-N to out_dir (default OUTPUT_DIR/adapter-step-N)
    in the same layout `tuneforge train` saves; returns the folder."""
    from ..io import save_adapter
    from ..methods import add_adapter, mark_trainable
    from ..registry import TASKS

    path = Path(checkpoint)
    if not (path / ckpt.CONFIG).is_file():
        raise TuneforgeError(f"{path} is not a training checkpoint with its run config (OUTPUT_DIR/checkpoints/"
                             f"step-N holding {ckpt.CONFIG}, written by `tuneforge train`)")
    if (path / ckpt.SHARDED).is_dir():
        raise TuneforgeError(f"checkpoint {path} is sharded (written by several processes); resume it with "
                             "`tuneforge train` and let the run save its adapter")
    problem = ckpt.damage(path)
    if problem is not None:
        raise TuneforgeError(f"checkpoint {path} is damaged: {problem}")
    cfg = resolve_config(path / ckpt.CONFIG)
    task = TASKS.get(cfg.task)()
    torch.manual_seed(cfg.train.seed)  # a new head is initialised while loading, then overwritten below
    model = api._load_model(cfg)
    task.configure_model(model, cfg)
    cfg.method = task.configure_method(cfg.method, model)
    add_adapter(model, cfg.method)
    mark_trainable(model)
    tensors = load_file(str(path / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise TuneforgeError(f"checkpoint {path} does not match the model its config builds (missing: {missing[:5]}, "
                             f"unexpected: {extra[:5]})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            copy_checked(params[name], tensor, name, error=TuneforgeError, hint=f"checkpoint {path}")
    out = Path(out_dir) if out_dir is not None else default_out(path)
    return save_adapter(model, out, base_model_name=cfg.model.name)

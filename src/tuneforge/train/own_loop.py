"""What the loops that sample their own training data (PPO, GRPO) share with each other and with the shared loop:
seeding, optimizer and schedule, exact resume from the newest checkpoint, the reporter with the user's hooks
(trackers, callbacks, save_best, early stopping: callbacks.py) and checkpoint saving that keeps the hooks' state.

    run = OwnLoop.start(model, train_cfg, output_dir, total, scheduler_steps, state, resume, progress)
    ... run.state, run.reporter, run.hooks, run.save(rng), run.finish(eval_metrics), run.close()
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .callbacks import RunHooks
from .distributed import Parallel
from .loop import check_weights
from .optim import build_optimizer, build_scheduler, sync_lr
from .report import Reporter


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class OwnLoop:
    model: object
    train_cfg: object
    output_dir: Path
    total: int
    optimizer: object
    scheduler: object
    params: list
    state: dict
    latest: Path | None
    reporter: object
    hooks: RunHooks
    started: float = field(default_factory=time.perf_counter)
    elapsed_before: float = 0.0

    @classmethod
    def start(cls, model, train_cfg, output_dir, total: int, scheduler_steps: int, state: dict, *,
              resume: bool, progress: bool) -> "OwnLoop":
        """Seeded optimizer and schedule, `state` (updated from the newest checkpoint when resuming, else the
        old checkpoints cleared) and the reporter wrapped by the user's hooks. Call after adding every trainable
        module (PPO's value head) so the optimizer and the checkpoints include it."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        root = output_dir / "checkpoints"
        optimizer = build_optimizer(model, train_cfg)
        scheduler = build_scheduler(optimizer, train_cfg, scheduler_steps)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        par = Parallel()  # one process: these loops refuse torchrun (train/api.py)
        history, latest, loaded = [], ckpt.latest_checkpoint(root) if resume else None, {}
        if latest is not None:
            loaded = par.load_checkpoint(latest, model, optimizer, scheduler)
            state.update({k: loaded[k] for k in state})
            history = loaded.get("history", [])
            sync_lr(scheduler)
        else:
            ckpt.clear(root)
        hooks = RunHooks(train_cfg, model, output_dir, par,
                         *((loaded.get("hooks"), state["global_step"]) if latest is not None else ()))
        try:
            reporter = hooks.wrap(Reporter(output_dir, history, total, min(state["global_step"], total), progress))
        except BaseException:
            hooks.close()
            raise
        return cls(model, train_cfg, output_dir, total, optimizer, scheduler, params, state, latest, reporter,
                   hooks, elapsed_before=state.get("elapsed_s", 0.0))

    @property
    def root(self) -> Path:
        return self.output_dir / "checkpoints"

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def save(self, rng: dict) -> Path:
        """Checkpoint of the current step (weights checked finite first), with the history and the hooks' state."""
        step = self.state["global_step"]
        check_weights(self.params, step, self.root)
        self.state["elapsed_s"] = self.elapsed()
        path = self.hooks.par.save_checkpoint(self.root, step, self.model, self.optimizer, self.scheduler,
                                              {**self.state, "history": self.reporter.history,
                                               "total_steps": self.total, "hooks": self.hooks.state()}, rng,
                                              self.train_cfg.keep_last)
        self.hooks.on_save(step, path)
        return path

    def last_eval(self) -> dict:
        """A finished run started again: the last evaluation in its history stands."""
        return next(({k: v for k, v in r.items() if k.startswith("eval_")}
                     for r in reversed(self.reporter.history) if "eval_reward" in r), {})

    def finish(self, eval_metrics: dict) -> dict:
        """With save_best: the best evaluation's weights back into the model and its metrics; else unchanged."""
        return self.hooks.finish(self.model, eval_metrics)

    def close(self) -> None:
        try:
            self.reporter.close()
        finally:
            self.hooks.close()

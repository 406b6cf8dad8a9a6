"""What a user attaches to the loop, reached through a handful of calls on `RunHooks` so the loop itself stays
about optimisation:

    reporter = hooks.wrap(reporter)   every metrics.jsonl record also goes to the trackers (tracking.py)
    hooks.on_step(step, logs)         every optimizer step: user callbacks' on_step
    hooks.on_eval(step, metrics)      every evaluation: callbacks' on_eval, save_best, early stopping
    hooks.on_save(step, path)         every checkpoint: callbacks' on_save
    hooks.stopped                     early stopping (or a callback returning True) asked to stop
    hooks.finish(model)               after training: put the best weights back (save_best)
    hooks.close()                     trackers closed, NEFTune's hook removed (also on errors)

A user callback is any class named `module:Class` in train.callbacks, built without arguments, with any of
on_step(step, logs), on_eval(step, metrics), on_save(step, path); on_step / on_eval returning True stop training
after that step (as Hugging Face's `control.should_training_stop`). In a multi-process run every process calls
its callbacks and process 0's decision to stop holds for all; trackers log from process 0 only.

save_best keeps output_dir/best/ = {trainable.safetensors, best.json}: the trainable parameters at the best
evaluation so far. It is outside checkpoints/, so keep_last never deletes it, and survives a resume (its value is
part of the hooks' state in each checkpoint).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from torch import nn

from ..config.hooks import metric_mode, resolve_callback
from ..errors import ConfigError, TuneforgeError
from ..models.state_copy import copy_checked
from .neftune import neftune
from .tracking import Trackers

BEST_DIR = "best"


def _improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _metric(metrics: dict, name: str, key: str):
    if name not in metrics:
        known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
        raise TuneforgeError(f"train.{key}: the evaluation reports no metric {name!r}; it reports: {known}")
    value = metrics[name]
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class _TrackedReporter:
    """The loop's reporter, whose records also reach the trackers."""

    def __init__(self, reporter, trackers: Trackers):
        self._reporter, self._trackers = reporter, trackers

    def __getattr__(self, name):
        return getattr(self._reporter, name)

    def record(self, record: dict) -> None:
        self._reporter.record(record)
        self._trackers.log(record)


class RunHooks:
    def __init__(self, cfg, model: nn.Module, output_dir, par, state: dict | None = None,
                 resumed_step: int | None = None):
        state = dict(state or {})
        self.cfg, self.model, self.par = cfg, model, par
        self.best_dir = Path(output_dir) / BEST_DIR
        self.stopped = bool(state.get("stopped", False))
        self.reporter = None
        self.early = state.get("early", {"best": None, "bad": 0})
        self.best = state.get("best", {"value": None, "step": None, "metrics": {}})
        self.callbacks = [resolve_callback(spec)() for spec in (getattr(cfg, "callbacks", None) or [])]
        self._neftune = neftune(model, getattr(cfg, "neftune_noise_alpha", None))
        self._neftune.__enter__()
        self.trackers = Trackers(None, output_dir)  # empty until built below
        try:
            if par.is_main:
                self.trackers = Trackers(cfg, output_dir, state.get("trackers"), resumed_step)
        except BaseException:
            self.close()
            raise
        if resumed_step is None and par.is_main and getattr(cfg, "save_best", None):
            _remove_best(self.best_dir)  # a fresh run: a best of an earlier run in this folder is not ours

    def wrap(self, reporter):
        self.reporter = reporter
        return _TrackedReporter(reporter, self.trackers) if self.trackers.items else reporter

    def _call(self, method: str, *args) -> bool:
        stop = False
        for callback in self.callbacks:
            fn = getattr(callback, method, None)
            if fn is not None and fn(*args) is True:
                stop = True
        return stop

    def _agree(self, stop: bool) -> bool:
        return bool(self.par.agree(stop)) if self.callbacks else stop

    def on_step(self, step: int, logs: dict) -> None:
        if self.callbacks and self._agree(self._call("on_step", step, dict(logs))):
            self.stopped = True

    def on_eval(self, step: int, metrics: dict) -> None:
        if not metrics:
            return
        stop = self._call("on_eval", step, dict(metrics))
        if self.cfg.save_best:
            value = _metric(metrics, self.cfg.save_best, "save_best")
            mode = metric_mode(self.cfg.save_best, self.cfg.save_best_mode)
            if value is not None and _improves(value, self.best["value"], mode):
                self.best = {"value": value, "step": step, "metrics": _plain(metrics)}
                self._save_best()
        es = self.cfg.early_stopping
        if es is not None:
            value = _metric(metrics, es.metric, "early_stopping.metric")
            mode = metric_mode(es.metric, es.mode)
            if value is not None and _improves(value, self.early["best"], mode, es.min_delta):
                self.early = {"best": value, "bad": 0}
            else:
                self.early = {"best": self.early["best"], "bad": self.early["bad"] + 1}
                if self.early["bad"] >= es.patience:
                    stop = True
                    self._message(f"early stopping at step {step}: {es.metric} has not improved on "
                                  f"{self.early['best']:.6g} for {es.patience} evaluations")
        if self.par.agree(stop):  # process 0 decides for all (its metrics are everyone's, but floats are floats)
            self.stopped = True

    def _message(self, text: str) -> None:
        if self.reporter is not None:
            self.reporter.message(text)

    def on_save(self, step: int, path) -> None:
        self._call("on_save", step, Path(path) if path is not None else None)

    def state(self) -> dict:
        """What a checkpoint keeps of the hooks, so a resumed run stops, keeps and logs as the whole run would."""
        return {"stopped": self.stopped, "early": self.early, "best": self.best, "trackers": self.trackers.state()}

    def _save_best(self) -> None:
        from safetensors.torch import save_file

        tensors = _full({n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad})  # every process: sharded tensors gather collectively
        if not self.par.is_main:
            return
        tmp = self.best_dir.with_name(f".{BEST_DIR}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp / "trainable.safetensors"))
        (tmp / "best.json").write_text(json.dumps({"metric": self.cfg.save_best, **self.best}, indent=1))
        _remove_best(self.best_dir)
        os.replace(tmp, self.best_dir)

    def finish(self, model: nn.Module, eval_metrics: dict) -> dict:
        """With save_best: the best evaluation's weights back into `model` (process 0) and its metrics returned;
        else `eval_metrics` unchanged. Call after the last checkpoint, which keeps the last step's weights."""
        if not getattr(self.cfg, "save_best", None) or self.best["step"] is None or not self.par.is_main:
            return eval_metrics
        from safetensors.torch import load_file

        path = self.best_dir / "trainable.safetensors"
        if not path.is_file():
            raise TuneforgeError(f"train.save_best: {path} is missing; the best weights cannot be restored")
        params = dict(model.named_parameters())
        for name, tensor in load_file(str(path)).items():
            copy_checked(params[name], tensor, name, hint=f"{path} was saved by another run", error=TuneforgeError)
        self._message(f"restored the best weights: step {self.best['step']}, "
                      f"{self.cfg.save_best}={self.best['value']:.6g} (kept in {self.best_dir})")
        return dict(self.best["metrics"])

    def close(self) -> None:
        """Trackers get FINISHED, KILLED (Ctrl-C) or FAILED from the exception on its way out, if any."""
        error = sys.exc_info()[1]
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self.trackers.close(status)
        finally:
            self._neftune.__exit__(None, None, None)




def check_own_loop(cfg, task: str) -> None:
    """A task that runs its own loop (ppo, grpo: own_loop.py) gets trackers, callbacks, early stopping and
    save_best, but not NEFTune: its loop keeps the model in eval mode (no dropout, ratio 1 at the first update),
    where NEFTune adds no noise, so a set neftune_noise_alpha is refused rather than silently ignored."""
    if getattr(cfg, "neftune_noise_alpha", None):
        raise ConfigError(f"task {task!r} samples its own training data and keeps the model in eval mode, where "
                          "NEFTune adds no noise: train.neftune_noise_alpha is not supported",
                          key="train.neftune_noise_alpha")
    if getattr(cfg, "ema_decay", None):
        raise ConfigError(f"task {task!r} runs its own loop, which keeps no moving average of the weights: "
                          "train.ema_decay is not supported; remove it", key="train.ema_decay")


def _full(tensors: dict) -> dict:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).to("cpu", copy=True).contiguous()
            for k, v in tensors.items()}


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _remove_best(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path, ignore_errors=True)

"""The one training loop. It never knows which method or task it runs: methods reach it through
`batch_context` / `on_optimizer_step`, tasks through the Task protocol (collate, num_targets, loss_sum, evaluate).

One optimizer step, with A = grad_accum_steps micro-batches b_1..b_A fetched first:

    N = sum_i num_targets(b_i)
    grad = sum_i d/dtheta [ loss_sum(b_i) / N ]       reported loss = sum_i loss_sum(b_i) / N

so every target token weighs the same whatever micro-batch it landed in (averaging per micro-batch would
over-weight short micro-batches; the bug that trl/transformers fixed in 2024). Then: clip to max_grad_norm,
AdamW step, scheduler step, `on_optimizer_step(model)`.

Exact resume: the data order is a function of (seed, epoch) and the position (epoch, index) is checkpointed
with weights, optimizer, scheduler and generator states (see checkpoint.py), so a resumed run computes the very
same losses as an uninterrupted one. Ctrl-C saves a checkpoint of the last finished step before exiting; a
Ctrl-C that lands inside a parameter update is held until that update (and its log line) is complete.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from . import checkpoint as ckpt
from .callbacks import RunHooks
from .distributed import Parallel
from .ema import ema_weights, load_ema, update_ema
from .memory import release_freed_memory
from .activation_checkpointing import activation_checkpointing
from .compile import attention_for_compile, compile_blocks
from .interrupts import Interrupts
from .length_groups import grouped_order
from .optim import build_optimizer, build_scheduler, on_optimizer_step, sync_lr
from .report import plot_losses
from .step_stats import StepStats
from .tasks.base import batch_context


@dataclass
class TrainResult:
    """What a finished run produced; `history` holds every metrics.jsonl record."""

    steps: int
    train_loss: float | None
    eval_metrics: dict
    output_dir: Path
    metrics_path: Path
    plot_path: Path | None
    checkpoint_dir: Path | None
    wall_time_s: float
    tokens_per_s: float
    history: list[dict] = field(default_factory=list, repr=False)
    data_report: dict = field(default_factory=dict)
    """Per split: records read, examples kept, dropped and truncated, with shares (train/data_report.py)."""
    self_training: list[dict] = field(default_factory=list)
    """One record per self-training round (train/self_training.py); empty for a plain run."""


class DataOrder:
    """Which examples each optimizer step sees. Epoch e visits a permutation drawn from a torch.Generator
    seeded with (seed, e); micro-batches are consecutive slices of it; a step takes grad_accum_steps of them
    (fewer at the end of an epoch). The position (epoch, index into the permutation) is all a resume needs.
    With `lengths` and a `group_window` the permutation is length-grouped (length_groups.py)."""

    def __init__(self, n: int, micro_batch_size: int, grad_accum_steps: int, seed: int,
                 lengths: list[int] | None = None, group_window: int = 0):
        if n == 0:
            raise ConfigError("there are no training examples", key="data.train")
        if micro_batch_size < 1 or grad_accum_steps < 1:
            raise ConfigError("micro_batch_size and grad_accum_steps must be >= 1", key="train.micro_batch_size")
        if group_window and (lengths is None or len(lengths) != n):
            raise ValueError("a length-grouped order needs one length per example")
        self.n, self.micro, self.accum, self.seed = n, micro_batch_size, grad_accum_steps, seed
        self.lengths, self.group_window = lengths, group_window
        self._cached: tuple[int, list[int]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(self.n / self.micro) / self.accum)

    def permutation(self, epoch: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            perm = torch.randperm(self.n, generator=gen).tolist()
            if self.group_window:
                perm = grouped_order(perm, self.lengths, self.micro, self.group_window, gen)
            self._cached = (epoch, perm)
        return self._cached[1]

    def step(self, epoch: int, index: int) -> tuple[list[list[int]], int, int]:
        """(example indices of each micro-batch, epoch after the step, index after the step)."""
        perm = self.permutation(epoch)
        chunks = []
        while len(chunks) < self.accum and index < self.n:
            chunks.append(perm[index : index + self.micro])
            index += self.micro
        return (chunks, epoch + 1, 0) if index >= self.n else (chunks, epoch, index)


def example_lengths(task, examples: list) -> list[int]:
    """Each training example's length in tokens, for a length-grouped order (the task's `example_length`)."""
    length = getattr(task, "example_length", None)
    lengths = [length(ex) for ex in examples] if length is not None else [None]
    if any(n is None for n in lengths):
        raise ConfigError(f"train.group_by_length needs each example's length, and task {task.name!r} does not "
                          f"give one; set group_by_length: 0", key="train.group_by_length")
    return lengths


def _logged_eval(history: list[dict], step: int) -> dict:
    """Eval metrics already recorded at `step`, so a finished run started again does not evaluate twice."""
    found = [r for r in history if "lr" not in r and r.get("step") == step]
    return {k: v for k, v in found[-1].items() if k not in ("step", "epoch", "elapsed_s")} if found else {}


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def accumulate(model: nn.Module, task, batches: list[dict], amp=nullcontext, par: Parallel | None = None):
    """Backward of one optimizer step's micro-batches, normalised over all their targets (on all processes).
    Returns (summed loss, number of targets); the step's loss is their ratio (nan when there are no targets)."""
    par = par or Parallel()
    total = par.all_sum(sum(int(task.num_targets(b)) for b in batches))
    if total == 0:
        return math.nan, 0
    summed = 0.0
    for batch in batches:
        with amp(), batch_context(model, batch):
            loss = task.loss_sum(model, batch)
        if loss.requires_grad:
            (loss / total).backward()
        summed = summed + loss.detach().float()  # stays on the device: one sync per step, below
    return float(par.all_sum(summed)), total


def check_finite(step: int, loss_sum: float, targets: int, grad_norm, root: Path | None) -> None:
    """Stop before the update when the loss or the gradient norm is nan/inf: one such step turns every weight into
    NaN, and a run that goes on would save them as its adapter and exit 0. The weights are still those of the
    previous step; nothing more is written (the newest checkpoint stays the last good one)."""
    norm = float(grad_norm)
    loss = loss_sum / targets if targets else 0.0
    if math.isfinite(loss) and math.isfinite(norm):
        return
    from ..errors import NonFiniteLoss

    checkpoint = ckpt.latest_checkpoint(root) if root is not None else None
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint is not None else "no checkpoint was saved yet"
    raise NonFiniteLoss(
        f"step {step}: the training loss is {loss:.4g} and the gradient norm {norm:.4g} (not finite); training "
        f"stopped before this update and saved no adapter; {kept}. Lower train.learning_rate, set "
        f"train.max_grad_norm, or check the data and the model's dtype"
    )


def check_weights(params, step: int, root: Path | None, par: Parallel | None = None) -> None:
    """Before a checkpoint is written: every trained weight must be finite (a finite loss can still take an update
    to inf, e.g. an infinite learning rate set in Python), so no checkpoint and no adapter ever holds NaN/inf."""
    bad = int(any(not bool(torch.isfinite(p.detach()).all()) for p in params))
    if par is not None:
        bad = par.all_sum(bad)  # sharded weights: every process checks its own shards, all stop together
    if bad:
        from ..errors import NonFiniteLoss

        checkpoint = ckpt.latest_checkpoint(root) if root is not None else None
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint is not None else "no checkpoint was saved yet"
        raise NonFiniteLoss(f"step {step}: the trained weights are not finite after the update; nothing was saved "
                            f"and no adapter is written; {kept}. Lower train.learning_rate")


def _num_tokens(task, batch: dict) -> int:
    return int(task.num_tokens(batch))


def evaluate(model: nn.Module, task, examples: list, cfg, amp=nullcontext, device=None) -> dict:
    """task.evaluate over micro_batch_size batches of examples (at most eval_batches), in eval mode, no grad."""
    if not examples:
        return {}
    device = device or next(model.parameters()).device
    size = cfg.micro_batch_size
    starts = range(0, len(examples), size)
    if cfg.eval_batches:
        starts = starts[: cfg.eval_batches]
    batches = (_to_device(task.collate(examples[s : s + size]), device) for s in starts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), amp():
            return dict(task.evaluate(model, batches))
    finally:
        model.train(was_training)


@dataclass
class _Run:
    """What one run_training call holds between steps. `state` is what a checkpoint keeps of the position:
    global_step, epoch, index, tokens, elapsed_s and the log window (a StepStats)."""

    model: nn.Module
    task: object
    train_examples: list
    eval_examples: list
    cfg: object
    output_dir: Path
    device: torch.device
    amp: object
    par: Parallel
    order: DataOrder
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: dict
    latest: Path | None
    reporter: object = None
    hooks: RunHooks | None = None
    session: StepStats = field(default_factory=StepStats)  # the steps this process ran, for tokens/s
    last_loss: float | None = None
    saved_step: int | None = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.root = self.output_dir / "checkpoints"
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.elapsed_before = self.state["elapsed_s"]
        self.saved_step = self.state["global_step"] if self.latest is not None else None
        self.rng: dict = {}

    @property
    def step(self) -> int:
        return self.state["global_step"]

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def epoch_float(self) -> float:
        return self.state["epoch"] + self.state["index"] / self.order.n


def _start(model, task, train_examples, eval_examples, cfg, output_dir: Path, resume: bool, progress: bool) -> _Run:
    """Set up one run: seeds, data order, optimizer and schedule, the processes, and the checkpoint to resume."""
    output_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    amp = partial(torch.autocast, device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext
    if getattr(cfg, "release_memory", False):
        release_freed_memory(device.type)  # freed activations go back to the OS: a lower peak RSS (memory.py)
    par = Parallel.current()  # several processes: see distributed.py; one process: every call is a no-op
    window = getattr(cfg, "group_by_length", 0)
    lengths = example_lengths(task, train_examples) if window else None
    task = par.task(task)
    _seed_everything(cfg.seed + par.rank)
    order = DataOrder(len(train_examples), cfg.micro_batch_size * par.world_size, cfg.grad_accum_steps, cfg.seed,
                      lengths, window)
    total_steps = cfg.max_steps or cfg.epochs * order.steps_per_epoch
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if getattr(cfg, "compile", False):
        attention_for_compile(model)  # CUDA: a kernel inductor compiles (see compile.py); CPU: no change
        compile_blocks(model)
    par.setup(model, optimizer, cfg)
    if getattr(cfg, "ema_decay", None) and par.sharded:
        raise ConfigError("train.ema_decay keeps whole-tensor shadows of the weights and is not supported on a "
                          "model sharded over several processes; set train.shard: false or ema_decay: null",
                          key="train.ema_decay")
    if par.sharded:  # the shards' device (host memory with cpu_offload, or a base loaded there: load_options)
        device = par.device  # is not where the model computes
        amp = partial(torch.autocast, device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext
    state = {"global_step": 0, "epoch": 0, "index": 0, "tokens": 0, "elapsed_s": 0.0, "window": StepStats()}
    root = output_dir / "checkpoints"
    latest = par.agree(ckpt.latest_checkpoint(root, warn=par.is_main)) if resume else None
    loaded = {}
    if latest is not None:
        loaded = par.load_checkpoint(latest, model, optimizer, scheduler)
        if loaded.get("examples", order.n) != order.n:  # the data order is a permutation of this many examples
            raise ConfigError(f"checkpoint {latest} was trained on {loaded['examples']} examples, this run has "
                              f"{order.n}: the data changed, so it cannot resume exactly; start over with "
                              f"--no-resume", key="data.train")
        if loaded.get("group_by_length", 0) != order.group_window:  # so is the order's grouping
            raise ConfigError(f"checkpoint {latest} was trained with group_by_length: "
                              f"{loaded.get('group_by_length', 0)}, this run has {order.group_window}: the data "
                              f"order differs, so it cannot resume exactly; set it back or start over with "
                              f"--no-resume", key="train.group_by_length")
        state.update({k: loaded[k] for k in state}, window=StepStats.from_list(loaded["window"]))
        sync_lr(scheduler)
    elif par.is_main:
        ckpt.clear(root)
    run = _Run(model, task, train_examples, eval_examples, cfg, output_dir, device, amp, par, order, total_steps,
               optimizer, scheduler, state, latest)
    reporter = par.reporter(output_dir, loaded.get("history", []), total_steps, min(run.step, total_steps), progress)
    # user hooks, trackers, save_best, early stopping, NEFTune: see callbacks.py
    run.hooks = RunHooks(cfg, model, output_dir, par, *((loaded.get("hooks"), run.step) if latest else ()))
    run.reporter = run.hooks.wrap(reporter)
    if latest is not None:
        run.reporter.message(f"resuming from {latest} (step {run.step} of {total_steps})")
    run.rng = ckpt.rng_state()  # what a checkpoint of the step already done holds
    return run


def _run_eval(run: _Run) -> dict:
    """Metrics of the weights the run saves: with train.ema_decay those of the EMA (ema.py), the live weights'
    scalars beside them as live_<name>; save_best and early stopping see the EMA's."""
    ema = bool(getattr(run.cfg, "ema_decay", None))
    live = evaluate(run.model, run.task, run.eval_examples, run.cfg, run.amp, run.device) if ema else {}
    with ema_weights(run.optimizer if ema else None):
        metrics = evaluate(run.model, run.task, run.eval_examples, run.cfg, run.amp, run.device)
        metrics.update({f"live_{k}": v for k, v in live.items() if isinstance(v, (int, float))})
        if metrics:
            run.reporter.record({"step": run.step, "epoch": run.epoch_float(), **metrics, "elapsed_s": run.elapsed()})
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            run.reporter.message(f"step {run.step}: {shown}")
        run.hooks.on_eval(run.step, metrics)  # save_best keeps the weights evaluated: the EMA's
    return metrics


def _save(run: _Run) -> Path:
    """A checkpoint of the last finished step, with the RNG states taken right after its update."""
    check_weights(run.params, run.step, run.root, run.par)
    run.state["elapsed_s"] = run.elapsed()
    extra = {"history": run.reporter.history, "total_steps": run.total_steps, "hooks": run.hooks.state(),
             "world_size": run.par.world_size, "sharded": run.par.sharded, "examples": run.order.n,
             "group_by_length": run.order.group_window, "window": run.state["window"].to_list()}
    path = run.par.save_checkpoint(run.root, run.step, run.model, run.optimizer, run.scheduler,
                                   {**run.state, **extra}, run.rng, run.cfg.keep_last)
    run.hooks.on_save(run.step, path)
    return path


def _log_step(run: _Run, stats: StepStats, lr: float, grad_norm) -> None:
    """The progress bar every step; a metrics.jsonl line (averaged over the window) every log_every steps."""
    run.session, run.last_loss = run.session + stats, stats.loss
    window = run.state["window"] = run.state["window"] + stats
    run.reporter.step(stats.loss, lr, stats.tokens_per_s)
    if run.step % max(1, run.cfg.log_every or 1) == 0 or run.step == run.total_steps:
        run.reporter.record({
            "step": run.step, "epoch": run.epoch_float(), "loss": window.loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": run.state["tokens"], "tokens_per_s": window.tokens_per_s, "elapsed_s": run.elapsed(),
        })
        run.state["window"] = StepStats()


def _optimizer_step(run: _Run, guard: Interrupts) -> dict:
    """One optimizer step (see the module docstring); returns what the on_step hooks get."""
    t0 = time.perf_counter()
    state, par = run.state, run.par
    chunks, next_epoch, next_index = run.order.step(state["epoch"], state["index"])
    batches = [_to_device(b, run.device) for b in par.collate(run.task, run.train_examples, chunks)]
    tokens = par.all_sum(sum(_num_tokens(run.task, b) for b in batches))
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, targets = accumulate(run.model, run.task, batches, run.amp, par)
    par.reduce_gradients(run.params)
    with guard.critical():
        grad_norm = par.grad_norm(torch.nn.utils.clip_grad_norm_(run.params, run.cfg.max_grad_norm or math.inf))
        check_finite(run.step + 1, loss_sum, targets, grad_norm, run.root)
        lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        run.scheduler.step()
        on_optimizer_step(run.model)
        if getattr(run.cfg, "ema_decay", None):
            update_ema(run.optimizer, run.cfg.ema_decay, run.step + 1)
        state.update(global_step=run.step + 1, epoch=next_epoch, index=next_index, tokens=state["tokens"] + tokens)
        run.rng = ckpt.rng_state()
        # the step's log line belongs to the update: a checkpoint taken on Ctrl-C must hold it
        stats = StepStats(loss_sum, targets, tokens, time.perf_counter() - t0)
        _log_step(run, stats, lr, grad_norm)
    return {"loss": run.last_loss, "lr": lr, "grad_norm": grad_norm, "epoch": run.epoch_float(),
            "tokens_per_s": stats.tokens_per_s}


def _on_interrupt(run: _Run, guard: Interrupts) -> None:
    """Ctrl-C: save the last finished step when that is safe, and say what was kept."""
    if guard.torn:
        run.reporter.message("interrupted inside a parameter update; the last saved checkpoint is kept")
    elif run.par.world_size > 1:  # saving needs every process, and each was interrupted somewhere else
        run.reporter.message("interrupted: a multi-process run keeps its last saved checkpoint")
    elif run.step > 0 and run.saved_step != run.step:
        run.reporter.message(f"interrupted: saved {_save(run)}; run again to resume")


def run_training(
    model: nn.Module,
    task,
    train_examples: list,
    eval_examples: list,
    cfg,
    output_dir,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train `model` in place on `task` as `cfg` (a TrainConfig) says, resuming from output_dir/checkpoints
    when resume is set; writes metrics.jsonl, loss.png and checkpoints under output_dir."""
    run = _start(model, task, train_examples, eval_examples, cfg, Path(output_dir), resume, progress)
    was_training, guard = model.training, Interrupts()
    eval_metrics: dict = {}
    try:
        with guard, activation_checkpointing(model, cfg.gradient_checkpointing, cfg.gradient_checkpointing_layers):
            while run.step < run.total_steps and not run.hooks.stopped:
                info = _optimizer_step(run, guard)
                run.hooks.on_step(run.step, info)
                if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < run.total_steps:
                    eval_metrics = _run_eval(run)
                if cfg.save_every and run.step % cfg.save_every == 0 and run.step < run.total_steps:
                    _save(run)
                    run.saved_step = run.step
            finished_before = (run.latest is not None and run.session.seconds == 0.0) or run.hooks.stopped
            eval_metrics = (finished_before and _logged_eval(run.reporter.history, run.step)) or _run_eval(run)
            final = _save(run) if run.saved_step != run.step else ckpt.latest_checkpoint(run.root)
            if getattr(cfg, "ema_decay", None):
                load_ema(run.optimizer)  # the saved model is the average; the checkpoint keeps the live weights
            run.par.finish(model)
            eval_metrics = run.hooks.finish(model, eval_metrics)
    except KeyboardInterrupt:
        _on_interrupt(run, guard)
        raise
    finally:
        model.train(was_training)
        run.reporter.close()
        run.hooks.close()
    if run.last_loss is None:
        run.last_loss = next((r["loss"] for r in reversed(run.reporter.history) if "loss" in r), None)
    return TrainResult(
        steps=run.step, train_loss=run.last_loss, eval_metrics=eval_metrics, output_dir=run.output_dir,
        metrics_path=run.reporter.metrics_path,
        plot_path=plot_losses(run.reporter.history, run.reporter.plot_path) if run.par.is_main else None,
        checkpoint_dir=final, wall_time_s=run.elapsed(), tokens_per_s=run.session.tokens_per_s,
        history=list(run.reporter.history),
    )

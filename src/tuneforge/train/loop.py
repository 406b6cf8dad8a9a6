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
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
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
from .memory import release_freed_memory
from ..models.blocks import repeated_blocks
from .compile import attention_for_compile, compile_blocks
from .optim import build_optimizer, build_scheduler, on_optimizer_step, sync_lr
from .report import plot_losses
from .selective_checkpoint import checkpoint_kwargs
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
    (fewer at the end of an epoch). The position (epoch, index into the permutation) is all a resume needs."""

    def __init__(self, n: int, micro_batch_size: int, grad_accum_steps: int, seed: int):
        if n == 0:
            raise ConfigError("there are no training examples", key="data.train")
        if micro_batch_size < 1 or grad_accum_steps < 1:
            raise ConfigError("micro_batch_size and grad_accum_steps must be >= 1", key="train.micro_batch_size")
        self.n, self.micro, self.accum, self.seed = n, micro_batch_size, grad_accum_steps, seed
        self._cached: tuple[int, list[int]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(self.n / self.micro) / self.accum)

    def permutation(self, epoch: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._cached = (epoch, torch.randperm(self.n, generator=gen).tolist())
        return self._cached[1]

    def step(self, epoch: int, index: int) -> tuple[list[list[int]], int, int]:
        """(example indices of each micro-batch, epoch after the step, index after the step)."""
        perm = self.permutation(epoch)
        chunks = []
        while len(chunks) < self.accum and index < self.n:
            chunks.append(perm[index : index + self.micro])
            index += self.micro
        return (chunks, epoch + 1, 0) if index >= self.n else (chunks, epoch, index)


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt at once, except inside `critical()` (the parameter update and its log line),
    where it is held until the update ends, so a checkpoint never holds half-updated weights or a step without its
    log line. `torn` is True if an
    interrupt escaped from inside an update anyway (raised by other code, not by the signal)."""

    def __init__(self):
        self.inside = self.pending = self.torn = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_signal(self, signum, frame):
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def critical(self):
        self.inside = self.torn = True
        yield
        self.inside = self.torn = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


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


def evaluate(model: nn.Module, task, examples: list, cfg, amp=nullcontext) -> dict:
    """task.evaluate over micro_batch_size batches of examples (at most eval_batches), in eval mode, no grad."""
    if not examples:
        return {}
    device = next(model.parameters()).device
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


@contextmanager
def _checkpointing(model: nn.Module, enabled, layers: int | None = None):
    """Activation checkpointing (non-reentrant, so frozen inputs need no requires_grad trick) for the run;
    transformers 5.x names it activation_checkpointing_*, older versions gradient_checkpointing_*. `layers`: only
    the first this many blocks recompute (Megatron's "block" method), the rest keep their activations."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    new_api = hasattr(model, "activation_checkpointing_enable")
    kwargs = checkpoint_kwargs(enabled)  # True: whole blocks; "elementwise": see selective_checkpoint.py
    had_input_grads = bool(getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"))
    if enabled and new_api:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif enabled and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if enabled and not had_input_grads and hasattr(model, "disable_input_require_grads"):
        # transformers also makes the embeddings' output require grad, which only reentrant checkpointing needs:
        # it would make the first block compute an input gradient nobody reads.
        model.disable_input_require_grads()
    if enabled and layers is not None:
        limit_checkpointed_blocks(model, layers)
    if enabled and config is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if enabled:
            disable = "activation_checkpointing_disable" if new_api else "gradient_checkpointing_disable"
            getattr(model, disable, lambda: None)()
            if config is not None:
                config.use_cache = use_cache


def limit_checkpointed_blocks(model: nn.Module, layers: int) -> int:
    """Leave checkpointing on for the first `layers` repeated blocks only; returns how many recompute now. Every
    block's activations are alive together at the end of the forward pass, so each block left out adds the same
    memory back and saves the same recompute time, whichever it is."""
    blocks = repeated_blocks(model)
    if blocks is None:
        return 0
    flagged = [b for b in blocks if hasattr(b, "gradient_checkpointing")]
    for i, block in enumerate(flagged):
        block.gradient_checkpointing = block.gradient_checkpointing and i < layers
    return sum(bool(b.gradient_checkpointing) for b in flagged)


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
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    root = output_dir / "checkpoints"
    device = next(model.parameters()).device
    amp = partial(torch.autocast, device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext
    if getattr(cfg, "release_memory", False):
        release_freed_memory(device.type)  # freed activations go back to the OS: a lower peak RSS (memory.py)
    par = Parallel.current()  # several processes: see distributed.py; one process: every call is a no-op
    task = par.task(task)
    _seed_everything(cfg.seed + par.rank)
    order = DataOrder(len(train_examples), cfg.micro_batch_size * par.world_size, cfg.grad_accum_steps, cfg.seed)
    total_steps = cfg.max_steps or cfg.epochs * order.steps_per_epoch
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    if getattr(cfg, "compile", False):
        attention_for_compile(model)  # CUDA: a kernel inductor compiles (see compile.py); CPU: no change
        compile_blocks(model)
    par.setup(model, optimizer, cfg)
    state = {"global_step": 0, "epoch": 0, "index": 0, "tokens": 0, "elapsed_s": 0.0, "window": [0.0, 0, 0, 0.0]}
    history: list[dict] = []
    latest = par.agree(ckpt.latest_checkpoint(root, warn=par.is_main)) if resume else None
    if latest is not None:
        loaded = ckpt.load_checkpoint(latest, model, optimizer, scheduler)
        if loaded.get("examples", order.n) != order.n:  # the data order is a permutation of this many examples
            raise ConfigError(f"checkpoint {latest} was trained on {loaded['examples']} examples, this run has "
                              f"{order.n}: the data changed, so it cannot resume exactly; start over with "
                              f"--no-resume", key="data.train")
        state.update({k: loaded[k] for k in state})
        history = loaded.get("history", [])
        sync_lr(scheduler)
    elif par.is_main:
        ckpt.clear(root)
    reporter = par.reporter(output_dir, history, total_steps, min(state["global_step"], total_steps), progress)
    # user hooks, trackers, save_best, early stopping, NEFTune: see callbacks.py
    hooks = RunHooks(cfg, model, output_dir, par, *((loaded.get("hooks"), state["global_step"]) if latest else ()))
    reporter = hooks.wrap(reporter)
    if latest is not None:
        reporter.message(f"resuming from {latest} (step {state['global_step']} of {total_steps})")

    params = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = cfg.max_grad_norm or math.inf
    was_training = model.training
    started, elapsed_before = time.perf_counter(), state["elapsed_s"]
    session_tokens, session_time, last_loss = 0, 0.0, None
    eval_metrics: dict = {}
    saved_step = state["global_step"] if latest is not None else None
    rng = ckpt.rng_state()
    guard = _Interrupts()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def epoch_float() -> float:
        return state["epoch"] + state["index"] / order.n

    def run_eval() -> dict:
        metrics = evaluate(model, task, eval_examples, cfg, amp)
        if metrics:
            step = state["global_step"]
            reporter.record({"step": step, "epoch": epoch_float(), **metrics, "elapsed_s": elapsed()})
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            reporter.message(f"step {step}: {shown}")
        hooks.on_eval(state["global_step"], metrics)
        return metrics

    def save(rng_snapshot: dict) -> Path:
        check_weights(params, state["global_step"], root, par)
        state["elapsed_s"] = elapsed()
        extra = {"history": reporter.history, "total_steps": total_steps, "hooks": hooks.state(),
                 "world_size": par.world_size, "examples": order.n}
        path = par.save_checkpoint(root, state["global_step"], model, optimizer, scheduler,
                                   {**state, **extra}, rng_snapshot, cfg.keep_last)
        hooks.on_save(state["global_step"], path)
        return path

    try:
        with guard, _checkpointing(model, cfg.gradient_checkpointing, cfg.gradient_checkpointing_layers):
            while state["global_step"] < total_steps and not hooks.stopped:
                t0 = time.perf_counter()
                chunks, next_epoch, next_index = order.step(state["epoch"], state["index"])
                batches = [_to_device(b, device) for b in par.collate(task, train_examples, chunks)]
                tokens = par.all_sum(sum(_num_tokens(task, b) for b in batches))
                model.train()
                optimizer.zero_grad(set_to_none=True)
                loss_sum, targets = accumulate(model, task, batches, amp, par)
                par.reduce_gradients(params)
                with guard.critical():
                    grad_norm = par.grad_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))
                    check_finite(state["global_step"] + 1, loss_sum, targets, grad_norm, root)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    on_optimizer_step(model)
                    state.update(global_step=state["global_step"] + 1, epoch=next_epoch, index=next_index,
                                 tokens=state["tokens"] + tokens)
                    rng = ckpt.rng_state()
                    # the step's log line belongs to the update: a checkpoint taken on Ctrl-C must hold it
                    dt = time.perf_counter() - t0
                    session_tokens, session_time = session_tokens + tokens, session_time + dt
                    last_loss = loss_sum / targets if targets else math.nan
                    window = state["window"] = [a + b for a, b in zip(state["window"], (loss_sum, targets, tokens, dt))]
                    step = state["global_step"]
                    reporter.step(last_loss, lr, tokens / dt if dt > 0 else 0.0)
                    if step % max(1, cfg.log_every or 1) == 0 or step == total_steps:
                        reporter.record({
                            "step": step, "epoch": epoch_float(),
                            "loss": window[0] / window[1] if window[1] else math.nan,
                            "lr": lr, "grad_norm": grad_norm, "tokens": state["tokens"],
                            "tokens_per_s": window[2] / window[3] if window[3] > 0 else 0.0, "elapsed_s": elapsed(),
                        })
                        state["window"] = [0.0, 0, 0, 0.0]
                hooks.on_step(step, {"loss": last_loss, "lr": lr, "grad_norm": grad_norm, "epoch": epoch_float(),
                                     "tokens_per_s": tokens / dt if dt > 0 else 0.0})
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    eval_metrics = run_eval()
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    save(rng)
                    saved_step = step
            finished_before = (latest is not None and session_time == 0.0) or hooks.stopped
            eval_metrics = (finished_before and _logged_eval(reporter.history, state["global_step"])) or run_eval()
            final = save(rng) if saved_step != state["global_step"] else ckpt.latest_checkpoint(root)
            par.finish(model)
            eval_metrics = hooks.finish(model, eval_metrics)
    except KeyboardInterrupt:
        if guard.torn:
            reporter.message("interrupted inside a parameter update; the last saved checkpoint is kept")
        elif par.world_size > 1:  # saving needs every process, and each was interrupted somewhere else
            reporter.message("interrupted: a multi-process run keeps its last saved checkpoint")
        elif state["global_step"] > 0 and saved_step != state["global_step"]:
            path = save(rng)
            reporter.message(f"interrupted: saved {path}; run again to resume")
        raise
    finally:
        model.train(was_training)
        reporter.close()
        hooks.close()

    if last_loss is None:
        last_loss = next((r["loss"] for r in reversed(reporter.history) if "loss" in r), None)
    return TrainResult(
        steps=state["global_step"],
        train_loss=last_loss,
        eval_metrics=eval_metrics,
        output_dir=output_dir,
        metrics_path=reporter.metrics_path,
        plot_path=plot_losses(reporter.history, reporter.plot_path) if par.is_main else None,
        checkpoint_dir=final,
        wall_time_s=elapsed(),
        tokens_per_s=session_tokens / session_time if session_time > 0 else 0.0,
        history=list(reporter.history),
    )

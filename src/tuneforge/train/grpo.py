"""GRPO (group relative policy optimisation) on an adapter, with programmatic rewards on decoded completions.

policy pi = the model with its adapter; reference pi_ref = the same model with adapters disabled (no second copy
of the weights; never run when beta = 0). One step (Shao et al. 2024, https://arxiv.org/abs/2402.03300, sec. 4;
the loss as TRL's GRPOTrainer computes it, which the tests check on the same inputs):

 1. sample G = num_generations completions o_i for each of prompts_per_step prompts q (temperature, top_p)
 2. r_i = sum_k w_k reward_k(q, o_i) on the decoded text; A_i = (r_i - mean_group r) / (std_group r + 1e-4)
    (scale_rewards: false only centres: Dr. GRPO, Liu et al. 2025, https://arxiv.org/abs/2503.20783)
 3. num_iterations optimizer steps on these samples, with rho_t = exp(log pi(o_t) - log pi_old(o_t)) (pi_old:
    the policy that sampled; with num_iterations = 1 it is the current policy detached, so rho = 1) and
        l_t = -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps_high) A_i) + beta k3_t,
        k3_t = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1      (Schulman's unbiased KL estimator)
    loss_type grpo:    mean over completions of (sum_t l_t / |o_i|)
              dapo:    sum over all completion tokens of l_t / their number (Yu et al. 2025, DAPO)
              dr_grpo: sum over all completion tokens of l_t / (completions x max_new_tokens)
    Each normaliser is the whole step's, so micro-batches give exactly the gradient of one big batch.

Dropout stays off throughout (eval mode). Optimizer, schedule (one scheduler step per optimizer step),
checkpoints (exact resume) and metrics file are the shared loop's; output beside the adapter: reward.png.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import checkpoint as ckpt
from .loop import DataOrder, TrainResult, check_finite, check_weights
from .optim import build_optimizer, build_scheduler, on_optimizer_step, sync_lr
from .report import Reporter


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """Each reward minus its group's mean, divided by the group's (unbiased) std + 1e-4 when `scale`."""
    grouped = rewards.view(-1, group)
    centred = (grouped - grouped.mean(dim=1, keepdim=True))
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return centred.reshape(-1)


def per_token_loss(logps, old_logps, ref_logps, advantages, *, beta: float, epsilon: float,
                   epsilon_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """l_t (B x T; zero nowhere in particular: mask it) and the per-token KL / clipped flags for the metrics."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = ratio.clamp(1 - epsilon, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    extra = {"clipped": (((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))).float()}
    if beta != 0.0:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        loss = loss + beta * kl
        extra["kl"] = kl.detach()
    return loss, extra


def loss_sum(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The micro-batch's share of the step's loss before the step's normaliser (see `normaliser`)."""
    mask = mask.to(token_loss.dtype)
    if loss_type == "grpo":
        return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
    if loss_type in ("dapo", "dr_grpo"):
        return (token_loss * mask).sum()
    raise ConfigError(f"unknown loss_type {loss_type!r}; choose grpo, dapo or dr_grpo", key="task.loss_type")


def normaliser(mask: torch.Tensor, loss_type: str, max_new_tokens: int) -> float:
    """What the summed loss of a whole step (mask: all its completions) is divided by."""
    if loss_type == "grpo":
        return float(mask.shape[0])
    if loss_type == "dapo":
        return max(float(mask.sum()), 1.0)
    return float(mask.shape[0] * max_new_tokens)


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, beta: float, epsilon: float,
              epsilon_high: float | None = None, loss_type: str = "grpo", max_new_tokens: int | None = None):
    """The loss of one step's completions in one piece (what the tests hold against TRL)."""
    token_loss, _ = per_token_loss(logps, old_logps, ref_logps, advantages, beta=beta, epsilon=epsilon,
                                   epsilon_high=epsilon_high)
    width = max_new_tokens if max_new_tokens is not None else mask.shape[1]
    return loss_sum(token_loss, mask, loss_type) / normaliser(mask, loss_type, width)


def score_completions(rewards, weights, batch: dict, prompts: list[dict], group: int) -> tuple[torch.Tensor, dict]:
    """(weighted total reward per completion, each reward's mean) for a batch of groups of `group` completions."""
    from .grpo_rewards import score

    texts = [p["text"] for p in prompts for _ in range(group)]
    keys = sorted({k for p in prompts for k in p.get("fields", {})})
    columns = {k: [p.get("fields", {}).get(k) for p in prompts for _ in range(group)] for k in keys}
    where = [f"prompt {p.get('index', i)}" + (f" (line {p['line']})" if "line" in p else "")
             for i, p in enumerate(prompts)]
    total = torch.zeros(len(texts))
    means = {}
    for (name, fn), weight in zip(rewards, weights):
        values = torch.tensor(score(name, fn, texts, batch["responses"], columns, group, where), dtype=torch.float32)
        total += weight * values
        means[name] = float(values.mean())
    return total, means


def token_logps(model, batch: dict, rows, temperature: float, micro: int, grad: bool = False):
    """log pi(o_t) of the given rows, in micro-batches, without grad (old policy / reference passes)."""
    from .ppo import policy_outputs

    parts = []
    with torch.set_grad_enabled(grad):
        for chunk in rows.split(micro):
            parts.append(policy_outputs(model, batch, chunk, temperature, values=False)[0])
    return torch.cat(parts)


def grpo_update(model, optimizer, scheduler, params, batch: dict, cfg, train_cfg, step: int = 0,
                root: Path | None = None) -> dict:
    """num_iterations optimizer steps over one batch of scored completions; returns the step's diagnostics.
    Stops before an update whose loss or gradient norm is not finite (loop.check_finite)."""
    from .ppo import policy_outputs

    mask = batch["response_mask"]
    rows = torch.arange(mask.shape[0])
    micro = train_cfg.micro_batch_size
    norm = normaliser(mask, cfg.loss_type, cfg.max_new_tokens)
    sums = dict.fromkeys(("loss", "clip_ratio", "kl", "entropy"), 0.0)
    norms = []
    for _ in range(cfg.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        for chunk in rows.split(micro):
            m = mask[chunk]
            logps, entropy, _ = policy_outputs(model, batch, chunk, cfg.temperature, values=False)
            old = batch["old_logps"][chunk] if "old_logps" in batch else logps.detach()
            ref = batch["ref_logps"][chunk] if "ref_logps" in batch else None
            tl, extra = per_token_loss(logps, old, ref, batch["advantages"][chunk], beta=cfg.beta,
                                       epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high)
            part = loss_sum(tl, m, cfg.loss_type) / norm
            part.backward()
            with torch.no_grad():
                sums["loss"] += float(part)
                for key, value in (("clip_ratio", extra["clipped"]), ("kl", extra.get("kl")), ("entropy", entropy)):
                    if value is not None:
                        sums[key] += float(value[m].sum())
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm or math.inf)))
        check_finite(step, sums["loss"], 1, norms[-1], root)
        optimizer.step()
        scheduler.step()
        on_optimizer_step(model)
    tokens = max(float(mask.sum()) * cfg.num_iterations, 1.0)
    out = {"loss": sums["loss"] / cfg.num_iterations, "grad_norm": sum(norms) / len(norms),
           "clip_ratio": sums["clip_ratio"] / tokens, "entropy": sums["entropy"] / tokens}
    if cfg.beta != 0.0:
        out["kl"] = sums["kl"] / tokens
    return out


def make_samples(model, tokenizer, prompts: list[dict], rewards, cfg, micro: int) -> dict:
    """Sample G completions per prompt, score them, and add advantages, old and reference log-probs."""
    from ..methods import disable_adapters
    from .ppo import sample

    group = cfg.num_generations
    expanded = [p for p in prompts for _ in range(group)]
    batch = sample(model, tokenizer, expanded, cfg.max_new_tokens, cfg.temperature, greedy=False, top_p=cfg.top_p)
    total, means = score_completions(rewards, cfg.weights, batch, prompts, group)
    batch["rewards"], batch["reward_means"] = total, means
    batch["advantages"] = group_advantages(total, group, cfg.scale_rewards).to(batch["input_ids"].device)
    rows = torch.arange(len(expanded))
    if cfg.num_iterations > 1:  # with one iteration pi_old is the current policy: its detached log-probs
        batch["old_logps"] = token_logps(model, batch, rows, cfg.temperature, micro)
    if cfg.beta != 0.0:
        with disable_adapters(model):
            batch["ref_logps"] = token_logps(model, batch, rows, cfg.temperature, micro)
    return batch


@torch.no_grad()
def evaluate_rewards(model, tokenizer, prompts: list[dict], rewards, cfg) -> dict:
    """Greedy completions of held-out prompts: eval_reward (weighted total) and each reward's mean
    (eval_<name>: for a 0/1 checker, the accuracy), comparable across steps (no sampling noise)."""
    from .ppo import sample

    totals, per, lengths = [], {}, []
    size = cfg.prompts_per_step * cfg.num_generations
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        batch = sample(model, tokenizer, chunk, cfg.max_new_tokens, cfg.temperature, greedy=True)
        total, means = score_completions(rewards, cfg.weights, batch, chunk, 1)
        totals += total.tolist()
        for name, value in means.items():
            per.setdefault(name, []).append((value, len(chunk)))
        lengths += batch["response_mask"].sum(-1).tolist()
    out = {"eval_reward": float(np.mean(totals)), "eval_completion_length": float(np.mean(lengths))}
    for name, parts in per.items():
        out[f"eval_{metric_name(name)}"] = sum(v * n for v, n in parts) / sum(n for _, n in parts)
    return out


def metric_name(reward_name: str) -> str:
    """A reward's name as a metrics key: 'my_rewards.py:score' -> 'score'."""
    return reward_name.rpartition(":")[2] or reward_name


def run_grpo(model, tokenizer, cfg, train_cfg, prompts: list[dict], eval_prompts: list[dict], output_dir, *,
             rewards, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train the model's active adapter with GRPO (cfg: the task's GRPOConfig; train_cfg: the run's TrainConfig;
    rewards: [(name, fn)] from `grpo_rewards.build_rewards`)."""
    from ..methods import active_adapters

    output_dir, started = Path(output_dir), time.perf_counter()
    root = output_dir / "checkpoints"
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_generations < 2:
        raise ConfigError("num_generations must be at least 2", key="task.num_generations")
    if not active_adapters(model):
        raise ConfigError("GRPO trains an adapter and uses the base as its reference; the model has none", key="method")
    if len(cfg.weights) != len(rewards):
        raise ConfigError(f"{len(cfg.weights)} reward weights for {len(rewards)} rewards", key="task.reward_weights")
    for i, p in enumerate(prompts):
        p.setdefault("index", i)
    for i, p in enumerate(eval_prompts):
        p.setdefault("index", i)
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed % 2**32)
    torch.manual_seed(train_cfg.seed)
    order = DataOrder(len(prompts), cfg.prompts_per_step, 1, train_cfg.seed)
    total = train_cfg.max_steps or train_cfg.epochs * order.steps_per_epoch
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, total * cfg.num_iterations)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {"global_step": 0, "epoch": 0, "index": 0, "tokens": 0, "elapsed_s": 0.0}
    history, latest = [], ckpt.latest_checkpoint(root) if resume else None
    if latest is not None:
        loaded = ckpt.load_checkpoint(latest, model, optimizer, scheduler)
        state.update({k: loaded[k] for k in state})
        history = loaded.get("history", [])
        sync_lr(scheduler)
    else:
        ckpt.clear(root)
    reporter = Reporter(output_dir, history, total, min(state["global_step"], total), progress)
    elapsed_before, session_tokens = state["elapsed_s"], 0
    was_training, final, eval_metrics, stats = model.training, latest, {}, {}
    model.eval()
    device = next(model.parameters()).device

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def run_eval() -> dict:
        if not eval_prompts:
            return {}
        metrics = evaluate_rewards(model, tokenizer, eval_prompts, rewards, cfg)
        reporter.record({"step": state["global_step"], **metrics, "elapsed_s": elapsed()})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "eval_completion_length")
        reporter.message(f"step {state['global_step']}: {shown}")
        return metrics

    amp = torch.autocast(device.type, dtype=torch.bfloat16) if train_cfg.bf16 else contextlib.nullcontext()
    try:
        amp.__enter__()
        if latest is None:
            eval_metrics = run_eval()
        rng = ckpt.rng_state()
        while state["global_step"] < total:
            t0 = time.perf_counter()
            chunks, next_epoch, next_index = order.step(state["epoch"], state["index"])
            batch = make_samples(model, tokenizer, [prompts[i] for i in chunks[0]], rewards, cfg,
                                 train_cfg.micro_batch_size)
            lr = optimizer.param_groups[0]["lr"]
            stats = grpo_update(model, optimizer, scheduler, params, batch, cfg, train_cfg, state["global_step"] + 1, root)
            mask = batch["response_mask"]
            generated = int(mask.sum())
            state.update(global_step=state["global_step"] + 1, epoch=next_epoch, index=next_index,
                         tokens=state["tokens"] + generated)
            rng, dt = ckpt.rng_state(), time.perf_counter() - t0
            session_tokens += generated
            step, grouped = state["global_step"], batch["rewards"].view(-1, cfg.num_generations)
            reporter.record({"step": step, "epoch": state["epoch"] + state["index"] / order.n, **stats,
                             "reward": float(batch["rewards"].mean()),
                             "reward_std": float(grouped.std(dim=1).mean()),
                             **{f"reward/{metric_name(k)}": v for k, v in batch["reward_means"].items()},
                             "completion_length": float(mask.sum(-1).float().mean()), "lr": lr,
                             "tokens": state["tokens"], "tokens_per_s": generated / dt, "elapsed_s": elapsed()})
            reporter.bar.update(1)
            reporter.bar.set_postfix(reward=f"{float(batch['rewards'].mean()):.3f}", refresh=False)
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total:
                eval_metrics = run_eval()
            if train_cfg.save_every and step % train_cfg.save_every == 0 and step < total:
                check_weights(params, step, root)
                state["elapsed_s"] = elapsed()
                final = ckpt.save_checkpoint(root, step, model, optimizer, scheduler,
                                             {**state, "history": reporter.history, "total_steps": total}, rng,
                                             train_cfg.keep_last)
        if latest is None or session_tokens:
            eval_metrics = run_eval()
        else:  # a finished run started again: its last evaluation stands
            eval_metrics = next(({k: v for k, v in r.items() if k.startswith("eval_")}
                                 for r in reversed(reporter.history) if "eval_reward" in r), {})
        if session_tokens:
            check_weights(params, state["global_step"], root)
            state["elapsed_s"] = elapsed()
            final = ckpt.save_checkpoint(root, state["global_step"], model, optimizer, scheduler,
                                         {**state, "history": reporter.history, "total_steps": total}, rng,
                                         train_cfg.keep_last)
    finally:
        amp.__exit__(None, None, None)
        model.train(was_training)
        reporter.close()
    wall = elapsed()
    last = {k: stats[k] for k in ("loss",) if k in stats}
    return TrainResult(steps=state["global_step"], train_loss=last.get("loss") if session_tokens else None,
                       eval_metrics=dict(eval_metrics), output_dir=output_dir, metrics_path=reporter.metrics_path,
                       plot_path=plot_rewards(reporter.history, output_dir / "reward.png"), checkpoint_dir=final,
                       wall_time_s=wall, tokens_per_s=session_tokens / wall if wall > 0 else 0.0,
                       history=list(reporter.history))


def plot_rewards(history: list[dict], path) -> Path | None:
    """Mean sampled reward per step (and greedy held-out reward and accuracy-like reward means) against step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in history if "reward" in r and "lr" in r]
    evals = [r for r in history if "eval_reward" in r]
    if not train and not evals:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        steps = [r["step"] for r in train]
        values = [r["reward"] for r in train]
        ax.plot(steps, values, alpha=0.35, label="sampled reward (per step)")
        k = max(1, len(values) // 10)
        if k > 1:
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=f"sampled reward ({k}-step mean)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_reward"] for r in evals], "o-", markersize=4,
                label="held-out reward (greedy)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path

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
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import checkpoint as ckpt
from .loop import DataOrder, TrainResult, check_finite
from .optim import on_optimizer_step
from .own_loop import OwnLoop, seed_all
from .report import figure, save_figure
from .rollout import policy_outputs, sample, token_logps


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


def grpo_update(model, optimizer, scheduler, params, batch: dict, cfg, train_cfg, step: int = 0,
                root: Path | None = None) -> dict:
    """num_iterations optimizer steps over one batch of scored completions; returns the step's diagnostics.
    Stops before an update whose loss or gradient norm is not finite (loop.check_finite). Only the rows in
    batch["train_rows"] train (drop_uniform_groups); with none, no optimizer step is taken (the schedule still
    advances) and the diagnostics say `skipped`."""
    rows = batch["train_rows"]
    mask = batch["response_mask"]
    if len(rows) == 0:
        for _ in range(cfg.num_iterations):
            scheduler.step()
        return {"loss": 0.0, "grad_norm": 0.0, "skipped": 1}
    micro = train_cfg.micro_batch_size
    norm = normaliser(mask[rows], cfg.loss_type, cfg.max_new_tokens)
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
    tokens = max(float(mask[rows].sum()) * cfg.num_iterations, 1.0)
    out = {"loss": sums["loss"] / cfg.num_iterations, "grad_norm": sum(norms) / len(norms),
           "clip_ratio": sums["clip_ratio"] / tokens, "entropy": sums["entropy"] / tokens, "skipped": 0}
    if cfg.beta != 0.0:
        out["kl"] = sums["kl"] / tokens
    return out


def make_samples(model, tokenizer, prompts: list[dict], rewards, cfg, micro: int) -> dict:
    """Sample G completions per prompt, score them, and add advantages, the rows that train (train_rows: all, or
    with drop_uniform_groups those of groups whose rewards differ), old and reference log-probs of those rows."""
    from ..methods import disable_adapters

    group = cfg.num_generations
    expanded = [p for p in prompts for _ in range(group)]
    batch = sample(model, tokenizer, expanded, cfg.max_new_tokens, cfg.temperature, greedy=False, top_p=cfg.top_p)
    total, means = score_completions(rewards, cfg.weights, batch, prompts, group)
    batch["rewards"], batch["reward_means"] = total, means
    batch["advantages"] = group_advantages(total, group, cfg.scale_rewards).to(batch["input_ids"].device)
    batch["train_rows"] = informative_rows(total, group) if cfg.drop_uniform_groups else torch.arange(len(expanded))
    rows = batch["train_rows"]
    if len(rows) and cfg.num_iterations > 1:  # with one iteration pi_old is the current policy, detached
        batch["old_logps"] = scatter_rows(token_logps(model, batch, rows, cfg.temperature, micro), rows, len(expanded))
    if len(rows) and cfg.beta != 0.0:
        with disable_adapters(model):
            ref = token_logps(model, batch, rows, cfg.temperature, micro)
        batch["ref_logps"] = scatter_rows(ref, rows, len(expanded))
    return batch


def informative_rows(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """Row indices of the groups whose rewards are not all equal: the others have every advantage 0, so no
    policy gradient (DAPO's dynamic-sampling filter, Yu et al. 2025, without its resampling)."""
    grouped = rewards.view(-1, group)
    keep = (grouped != grouped[:, :1]).any(dim=1)
    return torch.arange(rewards.numel()).view(-1, group)[keep].reshape(-1)


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    """values of `rows` placed in a zero tensor of `total` rows (indexed like the whole batch)."""
    out = values.new_zeros((total,) + tuple(values.shape[1:]))
    out[rows.to(values.device)] = values
    return out


@torch.no_grad()
def evaluate_rewards(model, tokenizer, prompts: list[dict], rewards, cfg, prefix: str = "eval") -> dict:
    """Greedy completions of held-out prompts: <prefix>_reward (weighted total) and each reward's mean
    (<prefix>_<name>: for a 0/1 checker, the accuracy), comparable across steps (no sampling noise)."""
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
    out = {f"{prefix}_reward": float(np.mean(totals)), f"{prefix}_completion_length": float(np.mean(lengths))}
    for name, parts in per.items():
        out[f"{prefix}_{metric_name(name)}"] = sum(v * n for v, n in parts) / sum(n for _, n in parts)
    return out


def metric_name(reward_name: str) -> str:
    """A reward's name as a metrics key: 'my_rewards.py:score' -> 'score'."""
    return reward_name.rpartition(":")[2] or reward_name


def run_grpo(model, tokenizer, cfg, train_cfg, prompts: list[dict], eval_prompts: list[dict], output_dir, *,
             rewards, test_prompts: list[dict] = (), resume: bool = True, progress: bool = True) -> TrainResult:
    """Train the model's active adapter with GRPO (cfg: the task's GRPOConfig; train_cfg: the run's TrainConfig;
    rewards: [(name, fn)] from `grpo_rewards.build_rewards`). eval_prompts are scored every eval_every steps (what
    train.save_best chooses on); test_prompts only before training and at the end, on the weights the run returns
    (the best ones with save_best): test_reward, test_<name> in the result and the metrics file."""
    from ..methods import active_adapters

    output_dir = Path(output_dir)
    if cfg.num_generations < 2:
        raise ConfigError("num_generations must be at least 2", key="task.num_generations")
    if not active_adapters(model):
        raise ConfigError("GRPO trains an adapter and uses the base as its reference; the model has none", key="method")
    if len(cfg.weights) != len(rewards):
        raise ConfigError(f"{len(cfg.weights)} reward weights for {len(rewards)} rewards", key="task.reward_weights")
    for group in (prompts, eval_prompts, test_prompts):
        for i, p in enumerate(group):
            p.setdefault("index", i)
    seed_all(train_cfg.seed)
    order = DataOrder(len(prompts), cfg.prompts_per_step, 1, train_cfg.seed)
    total = train_cfg.max_steps or train_cfg.epochs * order.steps_per_epoch
    state = {"global_step": 0, "epoch": 0, "index": 0, "tokens": 0, "elapsed_s": 0.0}
    run, session_tokens, eval_metrics, test_metrics, stats = None, 0, {}, {}, {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def scored(group: list[dict], prefix: str) -> dict:
        if not group:
            return {}
        metrics = evaluate_rewards(model, tokenizer, group, rewards, cfg, prefix)
        run.reporter.record({"step": state["global_step"], **metrics, "elapsed_s": run.elapsed()})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith("_completion_length"))
        run.reporter.message(f"step {state['global_step']}: {shown}")
        return metrics

    def run_eval() -> dict:
        metrics = scored(eval_prompts, "eval")
        run.hooks.on_eval(state["global_step"], metrics)
        return metrics

    amp = torch.autocast(device.type, dtype=torch.bfloat16) if train_cfg.bf16 else contextlib.nullcontext()
    try:
        run = OwnLoop.start(model, train_cfg, output_dir, total, total * cfg.num_iterations, state, resume=resume,
                            progress=progress)
        final, reporter = run.latest, run.reporter
        amp.__enter__()
        if run.latest is None:
            test_metrics = scored(test_prompts, "test")
            eval_metrics = run_eval()
        rng = ckpt.rng_state()
        while state["global_step"] < total and not run.hooks.stopped:
            t0 = time.perf_counter()
            chunks, next_epoch, next_index = order.step(state["epoch"], state["index"])
            batch = make_samples(model, tokenizer, [prompts[i] for i in chunks[0]], rewards, cfg,
                                 train_cfg.micro_batch_size)
            lr = run.optimizer.param_groups[0]["lr"]
            stats = grpo_update(model, run.optimizer, run.scheduler, run.params, batch, cfg, train_cfg,
                                state["global_step"] + 1, run.root)
            mask = batch["response_mask"]
            generated = int(mask.sum())
            state.update(global_step=state["global_step"] + 1, epoch=next_epoch, index=next_index,
                         tokens=state["tokens"] + generated)
            rng, dt = ckpt.rng_state(), time.perf_counter() - t0
            session_tokens += generated
            step, grouped = state["global_step"], batch["rewards"].view(-1, cfg.num_generations)
            logs = {"step": step, "epoch": state["epoch"] + state["index"] / order.n, **stats,
                    "reward": float(batch["rewards"].mean()), "reward_std": float(grouped.std(dim=1).mean()),
                    "groups_trained": len(batch["train_rows"]) // cfg.num_generations,
                    **{f"reward/{metric_name(k)}": v for k, v in batch["reward_means"].items()},
                    "completion_length": float(mask.sum(-1).float().mean()), "lr": lr,
                    "tokens": state["tokens"], "tokens_per_s": generated / dt, "elapsed_s": run.elapsed()}
            reporter.record(logs)
            run.hooks.on_step(step, logs)
            reporter.bar.update(1)
            reporter.bar.set_postfix(reward=f"{float(batch['rewards'].mean()):.3f}", refresh=False)
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total:
                eval_metrics = run_eval()
            if train_cfg.save_every and step % train_cfg.save_every == 0 and step < total:
                final = run.save(rng)
        eval_metrics = run_eval() if run.latest is None or session_tokens else run.last_eval()
        if session_tokens:
            final = run.save(rng)
        eval_metrics = run.finish(eval_metrics)
        test_metrics = scored(test_prompts, "test")  # on the weights returned (after the last checkpoint)
    finally:
        amp.__exit__(None, None, None)
        model.train(was_training)
        if run is not None:
            run.close()
    wall = run.elapsed()
    return TrainResult(steps=state["global_step"], train_loss=stats.get("loss") if session_tokens else None,
                       eval_metrics={**eval_metrics, **test_metrics}, output_dir=output_dir,
                       metrics_path=reporter.metrics_path,
                       plot_path=plot_rewards(reporter.history, output_dir / "reward.png"), checkpoint_dir=final,
                       wall_time_s=wall, tokens_per_s=session_tokens / wall if wall > 0 else 0.0,
                       history=list(reporter.history))


def plot_rewards(history: list[dict], path) -> Path | None:
    """Mean sampled reward per step (and greedy held-out reward and accuracy-like reward means) against step."""
    train = [r for r in history if "reward" in r and "lr" in r]
    evals = [r for r in history if "eval_reward" in r]
    if not train and not evals and not any("test_reward" in r for r in history):
        return None
    fig, (ax,) = figure()
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
                label="validation reward (greedy)")
    tests = [r for r in history if "test_reward" in r]
    if tests:
        ax.plot([r["step"] for r in tests], [r["test_reward"] for r in tests], "s", markersize=7,
                label="test reward (greedy; start, and the weights returned)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    return save_figure(fig, [ax], path)

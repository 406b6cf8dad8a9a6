"""RLHF with PPO on an adapter, with the policy, the reference and the reward model on one copy of the base.

policy pi = the model with its adapter; reference pi_ref = the same model with adapters disabled; values V = a
Linear value head on the policy's final hidden state; reward r = a second adapter with a scalar head, or a
Python function. One PPO step (Schulman et al. 2017, https://arxiv.org/abs/1707.06347; for language models as
Ziegler et al. 2019, https://arxiv.org/abs/1909.08593 and Ouyang et al. 2022, https://arxiv.org/abs/2203.02155):

 1. rollout: sample a response y for each of rollout_batch_size prompts x from pi (temperature T, no top-k/p)
 2. per-token rewards: k_t = log pi(y_t) - log pi_ref(y_t),  r_t = -kl_coef k_t  (+ r(x, y) on the last token)
 3. GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438):
        delta_t = r_t + gamma V_{t+1} - V_t,   A_t = sum_l (gamma lam)^l delta_{t+l},   R_t = A_t + V_t
    advantages whitened over the batch's response tokens
 4. ppo_epochs passes over the rollouts in minibatches, with rho_t = exp(log pi_new(y_t) - log pi_old(y_t)):
        L_pg = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))
        L_v  = 1/2 max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -eps_v, eps_v) - R_t)^2)
        loss = mean over response tokens of L_pg + vf_coef L_v
 5. adaptive KL control: kl_coef <- kl_coef (1 + clip(KL / target_kl - 1, -0.2, 0.2) rollout_batch_size / horizon)

Dropout stays off (eval mode) throughout, so the first minibatch's ratio is exactly 1. The optimizer, schedule
(one scheduler step per PPO step), checkpoints (the value head is checkpointed with the adapter) and metrics file
are the shared loop's. Ctrl-C keeps the last saved checkpoint; a run started again resumes from it.
Output beside the adapter: value_head.safetensors and reward_kl.png (mean reward and KL against step).
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from . import checkpoint as ckpt
from .loop import DataOrder, TrainResult, check_finite
from .optim import on_optimizer_step
from .own_loop import OwnLoop, seed_all
from .report import figure, save_figure
from .ppo_rewards import REWARD_ADAPTER, AdapterReward, FunctionReward
from .rollout import VALUE_HEAD, policy_outputs, sample

def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns); rewards and values are zero past each response's end, so nothing leaks back."""
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        running = rewards[:, t] + gamma * following - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = x[mask].mean()
    std = x[mask].std(unbiased=False) if int(mask.sum()) > 1 else torch.ones((), device=x.device)
    return ((x - mean) / (std + 1e-8)) * mask


def ppo_token_losses(logps, old_logps, values, old_values, returns, advantages, cliprange: float,
                     cliprange_value: float):
    """Per-token (policy loss, value loss, clipped?) of PPO (Schulman et al. 2017, eq. 7; values clipped as in
    Ziegler et al. 2019 / TRL's PPO):
        r = exp(logp - logp_old),   pg = max(-A r, -A clip(r, 1 - e, 1 + e))
        v_c = v_old + clip(v - v_old, -e_v, e_v),   vf = 0.5 max((v - R)^2, (v_c - R)^2)
    `clipped` marks the tokens where the clipped policy term is the one taken (the clip fraction)."""
    ratio = torch.exp(logps - old_logps)
    pg1, pg2 = -advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf = 0.5 * torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    return torch.max(pg1, pg2), vf, pg2 > pg1


def next_kl_coef(coef: float, kl: float, batch_size: int, cfg) -> float:
    """The adaptive controller of Ziegler et al. 2019 (fixed control returns coef)."""
    if cfg.kl_control == "fixed":
        return coef
    error = max(-0.2, min(0.2, kl / cfg.target_kl - 1.0))
    return coef * (1.0 + error * batch_size / cfg.kl_horizon)


@torch.no_grad()
def make_rollout(model, tokenizer, prompts: list[dict], reward, cfg, kl_coef: float) -> dict:
    """Sample, score, and compute the per-token rewards, values, advantages and returns of one PPO step."""
    from ..methods import disable_adapters

    batch = sample(model, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, greedy=False)
    rows = torch.arange(len(prompts))
    batch["logps"], batch["entropy"], batch["values"] = policy_outputs(model, batch, rows, cfg.temperature)
    with disable_adapters(model):
        ref_logps, _, _ = policy_outputs(model, batch, rows, cfg.temperature, values=False)
    resp = batch["response_mask"]
    batch["scores"] = reward(model, batch)
    kl = (batch["logps"] - ref_logps) * resp
    rewards = -kl_coef * kl
    rewards[rows, resp.sum(-1) - 1] += batch["scores"]
    advantages, batch["returns"] = gae(rewards, batch["values"], cfg.gamma, cfg.lam)
    batch["advantages"] = whiten(advantages, resp)
    batch["kl"] = kl.sum(-1)
    return batch


def ppo_update(model, optimizer, params, batch: dict, cfg, train_cfg, generator, step: int = 0,
               root: Path | None = None) -> dict:
    """ppo_epochs passes over the rollouts; token-weighted means of the losses and diagnostics. Stops before an
    update whose loss or gradient norm is not finite (`check_finite`; step and root name it in the message)."""
    resp = batch["response_mask"]
    size, micro = resp.shape[0], train_cfg.micro_batch_size
    per_step = micro * train_cfg.grad_accum_steps
    sums, tokens, norms = dict.fromkeys(("policy_loss", "value_loss", "clipfrac", "approx_kl", "loss"), 0.0), 0, []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, per_step):
            rows_step = order[start : start + per_step]
            count = int(resp[rows_step].sum())
            optimizer.zero_grad(set_to_none=True)
            for rows in rows_step.split(micro):
                m = resp[rows]
                logps, _, values = policy_outputs(model, batch, rows, cfg.temperature)
                pg, vf, clipped = ppo_token_losses(logps, batch["logps"][rows], values, batch["values"][rows],
                                                   batch["returns"][rows], batch["advantages"][rows], cfg.cliprange,
                                                   cfg.cliprange_value)
                loss = (pg + cfg.vf_coef * vf)[m].sum()
                (loss / max(count, 1)).backward()
                with torch.no_grad():
                    for key, value in (("policy_loss", pg), ("value_loss", vf), ("clipfrac", clipped.float()),
                                       ("approx_kl", 0.5 * (logps - batch["logps"][rows]) ** 2)):
                        sums[key] += float(value[m].sum())
                    sums["loss"] += float(loss)
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm or math.inf)))
            check_finite(step, sums["loss"], tokens + count, norms[-1], root)
            optimizer.step()
            on_optimizer_step(model)
            tokens += count
    out = {k: v / max(tokens, 1) for k, v in sums.items()}
    out["grad_norm"] = sum(norms) / len(norms)
    return out


def evaluate_reward(model, tokenizer, prompts: list[dict], reward, cfg) -> dict:
    """Mean reward of greedy responses to held-out prompts (no sampling noise, comparable across steps)."""
    scores, lengths = [], []
    for start in range(0, len(prompts), cfg.rollout_batch_size):
        batch = sample(model, tokenizer, prompts[start : start + cfg.rollout_batch_size], cfg.max_new_tokens,
                       cfg.temperature, greedy=True)
        scores += reward(model, batch).tolist()
        lengths += batch["response_mask"].sum(-1).tolist()
    return {"eval_reward": float(np.mean(scores)), "eval_response_length": float(np.mean(lengths))}


def run_ppo(model, tokenizer, cfg, train_cfg, prompts: list[dict], eval_prompts: list[dict], output_dir, *,
            reward=None, reward_adapter=None, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train the model's active adapter with PPO (cfg: the task's PPOConfig; train_cfg: the run's TrainConfig).
    `reward`: fn(prompts, responses) -> floats; else `reward_adapter`, a reward adapter directory."""
    from safetensors.torch import save_file

    from ..methods import active_adapters, delete_adapter

    output_dir = Path(output_dir)
    if not active_adapters(model):
        raise ConfigError("PPO trains an adapter and uses the base as its reference; the model has none", key="method")
    seed_all(train_cfg.seed)
    if reward is None and reward_adapter is None:
        raise ConfigError("PPO needs a reward: a reward function or a reward adapter directory", key="task")
    scorer = FunctionReward(reward) if reward is not None else AdapterReward(model, reward_adapter)
    device = next(model.parameters()).device
    hidden = model.config.get_text_config().hidden_size
    head = nn.Linear(hidden, 1).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model.add_module(VALUE_HEAD, head)  # a submodule, so optimizer groups and checkpoints include it
    order = DataOrder(len(prompts), cfg.rollout_batch_size, 1, train_cfg.seed)
    total = train_cfg.max_steps or train_cfg.epochs * order.steps_per_epoch
    state = {"global_step": 0, "epoch": 0, "index": 0, "kl_coef": cfg.kl_coef, "tokens": 0, "elapsed_s": 0.0}
    run = None
    was_training, session_tokens, eval_metrics, last = model.training, 0, {}, {}
    model.eval()

    def run_eval() -> dict:
        if not eval_prompts:
            return {}
        metrics = evaluate_reward(model, tokenizer, eval_prompts, scorer, cfg)
        run.reporter.record({"step": state["global_step"], **metrics, "elapsed_s": run.elapsed()})
        run.reporter.message(f"step {state['global_step']}: eval_reward={metrics['eval_reward']:.4g}")
        run.hooks.on_eval(state["global_step"], metrics)
        return metrics

    # train.bf16: every forward, generation included, under bf16 autocast (what train() sets for fp32 master
    # weights of base weights trained on a bf16 model, as the one-loss-per-batch loop does)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if train_cfg.bf16 else contextlib.nullcontext()
    try:
        run = OwnLoop.start(model, train_cfg, output_dir, total, total, state, resume=resume, progress=progress)
        final, reporter = run.latest, run.reporter
        amp.__enter__()
        if run.latest is None:
            eval_metrics = run_eval()
        rng = ckpt.rng_state()
        while state["global_step"] < total and not run.hooks.stopped:
            t0 = time.perf_counter()
            chunks, next_epoch, next_index = order.step(state["epoch"], state["index"])
            batch = make_rollout(model, tokenizer, [prompts[i] for i in chunks[0]], scorer, cfg, state["kl_coef"])
            generator = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + state["global_step"])
            stats = ppo_update(model, run.optimizer, run.params, batch, cfg, train_cfg, generator,
                               state["global_step"] + 1, run.root)
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            resp = batch["response_mask"]
            kl = float(batch["kl"].mean())
            generated = int(resp.sum())
            state.update(global_step=state["global_step"] + 1, epoch=next_epoch, index=next_index,
                         tokens=state["tokens"] + generated, kl_coef=next_kl_coef(state["kl_coef"], kl, len(resp), cfg))
            rng, dt = ckpt.rng_state(), time.perf_counter() - t0
            session_tokens += generated
            step = state["global_step"]
            last = {"reward": float(batch["scores"].mean()), "kl": kl}
            logs = {"step": step, "epoch": state["epoch"] + state["index"] / order.n, **stats, **last,
                    "reward_std": float(batch["scores"].std()) if len(resp) > 1 else 0.0,
                    "kl_coef": state["kl_coef"], "entropy": float(batch["entropy"][resp].mean()),
                    "response_length": float(resp.sum(-1).float().mean()), "lr": lr,
                    "tokens": state["tokens"], "tokens_per_s": generated / dt, "elapsed_s": run.elapsed()}
            reporter.record(logs)
            run.hooks.on_step(step, logs)
            reporter.bar.update(1)
            reporter.bar.set_postfix(reward=f"{last['reward']:.3f}", kl=f"{kl:.3f}", refresh=False)
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total:
                eval_metrics = run_eval()
            if train_cfg.save_every and step % train_cfg.save_every == 0 and step < total:
                final = run.save(rng)
        eval_metrics = run_eval() if run.latest is None or session_tokens else run.last_eval()
        if session_tokens:  # after the final evaluation, so a run resumed from here keeps it in its history
            final = run.save(rng)
        eval_metrics = run.finish(eval_metrics)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(output_dir / "value_head.safetensors"))
    finally:
        amp.__exit__(None, None, None)
        model.train(was_training)
        if run is not None:
            run.close()
        delattr(model, VALUE_HEAD)
        if isinstance(scorer, AdapterReward):
            delete_adapter(model, REWARD_ADAPTER)
    wall = run.elapsed()
    return TrainResult(steps=state["global_step"], train_loss=stats["loss"] if session_tokens else None,
                       eval_metrics={**eval_metrics, **last}, output_dir=output_dir,
                       metrics_path=reporter.metrics_path,
                       plot_path=plot_reward_kl(reporter.history, output_dir / "reward_kl.png"),
                       checkpoint_dir=final, wall_time_s=wall,
                       tokens_per_s=session_tokens / wall if wall > 0 else 0.0, history=list(reporter.history))


def plot_reward_kl(history: list[dict], path) -> Path | None:
    """Mean rollout reward (and greedy eval reward) above, KL to the reference below, against PPO step."""
    train = [r for r in history if "kl" in r and "lr" in r]
    evals = [(r["step"], r["eval_reward"]) for r in history if "eval_reward" in r]
    if not train and not evals:
        return None
    fig, (top, bottom) = figure(2, (7, 5.5))
    if train:
        top.plot([r["step"] for r in train], [r["reward"] for r in train], label="rollout reward (sampled)")
        bottom.plot([r["step"] for r in train], [r["kl"] for r in train], color="tab:red", label="KL to reference")
    if evals:
        top.plot(*zip(*evals), "o-", label="eval reward (greedy, held-out prompts)", markersize=4)
    top.set_ylabel("mean reward")
    bottom.set_ylabel("KL (nats / response)")
    bottom.set_xlabel("PPO step")
    return save_figure(fig, [top, bottom], path)

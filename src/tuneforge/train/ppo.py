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
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.padding import pad as pad_rows
from ..errors import ConfigError
from ..models.stop_tokens import generation_pad_id, stop_token_ids
from . import checkpoint as ckpt
from .loop import DataOrder, TrainResult, check_finite, check_weights
from .optim import build_optimizer, build_scheduler, on_optimizer_step, sync_lr
from .ppo_rewards import REWARD_ADAPTER, AdapterReward, FunctionReward
from .report import Reporter
from .tasks.dpo import selected_outputs

VALUE_HEAD = "tuneforge_value_head"


@torch.no_grad()
def sample(model, tokenizer, prompts: list[dict], max_new_tokens: int, temperature: float, greedy: bool,
           top_p: float = 1.0) -> dict:
    """Left-padded prompts + generated responses, with masks: attention_mask (prompt + response up to and
    including its first stop token), response_mask (B x T), score_mask (attention without stop tokens)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    pad = generation_pad_id(tokenizer, stops)
    ids, mask = pad_rows([p["ids"] for p in prompts], pad, side="left")
    width = ids.shape[1]
    ids, mask = ids.to(device), mask.to(device)
    options = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad, **options)
    response = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:]
    is_stop = torch.isin(response, torch.tensor(stops, device=device))
    response_mask = (is_stop.long().cumsum(-1) - is_stop.long()) == 0  # up to and including the first stop
    full_mask = torch.cat([mask, response_mask.long()], dim=1)
    texts = [tokenizer.decode(r[m & ~s], skip_special_tokens=True) for r, m, s in zip(response, response_mask, is_stop)]
    return {"input_ids": torch.cat([ids, response], dim=1), "attention_mask": full_mask,
            "position_ids": (full_mask.cumsum(-1) - 1).clamp(min=0), "response_mask": response_mask,
            "score_mask": torch.cat([mask, (response_mask & ~is_stop).long()], dim=1), "prompt_width": width,
            "prompts": [p["text"] for p in prompts], "responses": texts}


def policy_outputs(model, batch: dict, rows, temperature: float, values: bool = True):
    """(log pi(y_t), entropy_t, V_t), each B x T (zeros off the response), for the given rows of a rollout."""
    resp = batch["response_mask"][rows]
    width, steps = batch["prompt_width"], resp.shape[1]
    select = torch.zeros_like(batch["attention_mask"][rows], dtype=torch.bool)
    select[:, width - 1 : width - 1 + steps] = resp  # logits at t predict token t + 1
    inputs = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "position_ids")}
    hidden, logits = selected_outputs(model, inputs, select)
    logprobs = F.log_softmax(logits.float() / temperature, dim=-1)
    tokens = batch["input_ids"][rows][:, width:][resp]
    out = torch.zeros((3,) + resp.shape, device=resp.device)
    out[0][resp] = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out[1][resp] = -(logprobs.exp() * logprobs).sum(-1)
    if values:
        with torch.autocast(hidden.device.type, enabled=False):  # values stay fp32 under train.bf16 too
            out[2][resp] = getattr(model, VALUE_HEAD)(hidden.float()).squeeze(-1)
    return out[0], out[1], out[2]


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

    output_dir, started = Path(output_dir), time.perf_counter()
    root = output_dir / "checkpoints"
    output_dir.mkdir(parents=True, exist_ok=True)
    if not active_adapters(model):
        raise ConfigError("PPO trains an adapter and uses the base as its reference; the model has none", key="method")
    random.seed(train_cfg.seed)
    np.random.seed(train_cfg.seed % 2**32)
    torch.manual_seed(train_cfg.seed)
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
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, total)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {"global_step": 0, "epoch": 0, "index": 0, "kl_coef": cfg.kl_coef, "tokens": 0, "elapsed_s": 0.0}
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
    was_training, final, eval_metrics, last = model.training, latest, {}, {}
    model.eval()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    def run_eval() -> dict:
        if not eval_prompts:
            return {}
        metrics = evaluate_reward(model, tokenizer, eval_prompts, scorer, cfg)
        reporter.record({"step": state["global_step"], **metrics, "elapsed_s": elapsed()})
        reporter.message(f"step {state['global_step']}: eval_reward={metrics['eval_reward']:.4g}")
        return metrics

    def save(rng_snapshot: dict) -> Path:
        check_weights(params, state["global_step"], root)
        state["elapsed_s"] = elapsed()
        return ckpt.save_checkpoint(root, state["global_step"], model, optimizer, scheduler,
                                    {**state, "history": reporter.history, "total_steps": total}, rng_snapshot,
                                    train_cfg.keep_last)

    # train.bf16: every forward, generation included, under bf16 autocast (what train() sets for fp32 master
    # weights of base weights trained on a bf16 model, as the one-loss-per-batch loop does)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if train_cfg.bf16 else contextlib.nullcontext()
    try:
        amp.__enter__()
        if latest is None:
            eval_metrics = run_eval()
        while state["global_step"] < total:
            t0 = time.perf_counter()
            chunks, next_epoch, next_index = order.step(state["epoch"], state["index"])
            batch = make_rollout(model, tokenizer, [prompts[i] for i in chunks[0]], scorer, cfg, state["kl_coef"])
            generator = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + state["global_step"])
            stats = ppo_update(model, optimizer, params, batch, cfg, train_cfg, generator, state["global_step"] + 1, root)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            resp = batch["response_mask"]
            kl = float(batch["kl"].mean())
            generated = int(resp.sum())
            state.update(global_step=state["global_step"] + 1, epoch=next_epoch, index=next_index,
                         tokens=state["tokens"] + generated, kl_coef=next_kl_coef(state["kl_coef"], kl, len(resp), cfg))
            rng, dt = ckpt.rng_state(), time.perf_counter() - t0
            session_tokens += generated
            step = state["global_step"]
            last = {"reward": float(batch["scores"].mean()), "kl": kl}
            reporter.record({"step": step, "epoch": state["epoch"] + state["index"] / order.n, **stats, **last,
                             "reward_std": float(batch["scores"].std()) if len(resp) > 1 else 0.0,
                             "kl_coef": state["kl_coef"], "entropy": float(batch["entropy"][resp].mean()),
                             "response_length": float(resp.sum(-1).float().mean()), "lr": lr,
                             "tokens": state["tokens"], "tokens_per_s": generated / dt, "elapsed_s": elapsed()})
            reporter.bar.update(1)
            reporter.bar.set_postfix(reward=f"{last['reward']:.3f}", kl=f"{kl:.3f}", refresh=False)
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total:
                eval_metrics = run_eval()
            if train_cfg.save_every and step % train_cfg.save_every == 0 and step < total:
                final = save(rng)
        if latest is None or session_tokens:
            eval_metrics = run_eval()
        else:  # a finished run started again: its last evaluation stands
            eval_metrics = next(({k: v for k, v in r.items() if k.startswith("eval_")}
                                 for r in reversed(reporter.history) if "eval_reward" in r), {})
        if session_tokens:  # after the final evaluation, so a run resumed from here keeps it in its history
            final = save(rng)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(output_dir / "value_head.safetensors"))
    finally:
        amp.__exit__(None, None, None)
        model.train(was_training)
        reporter.close()
        delattr(model, VALUE_HEAD)
        if isinstance(scorer, AdapterReward):
            delete_adapter(model, REWARD_ADAPTER)
    wall = elapsed()
    return TrainResult(steps=state["global_step"], train_loss=stats["loss"] if session_tokens else None,
                       eval_metrics={**eval_metrics, **last}, output_dir=output_dir,
                       metrics_path=reporter.metrics_path,
                       plot_path=plot_reward_kl(reporter.history, output_dir / "reward_kl.png"),
                       checkpoint_dir=final, wall_time_s=wall,
                       tokens_per_s=session_tokens / wall if wall > 0 else 0.0, history=list(reporter.history))


def plot_reward_kl(history: list[dict], path) -> Path | None:
    """Mean rollout reward (and greedy eval reward) above, KL to the reference below, against PPO step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in history if "kl" in r and "lr" in r]
    evals = [(r["step"], r["eval_reward"]) for r in history if "eval_reward" in r]
    if not train and not evals:
        return None
    fig = Figure(figsize=(7, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    if train:
        top.plot([r["step"] for r in train], [r["reward"] for r in train], label="rollout reward (sampled)")
        bottom.plot([r["step"] for r in train], [r["kl"] for r in train], color="tab:red", label="KL to reference")
    if evals:
        top.plot(*zip(*evals), "o-", label="eval reward (greedy, held-out prompts)", markersize=4)
    top.set_ylabel("mean reward")
    bottom.set_ylabel("KL (nats / response)")
    bottom.set_xlabel("PPO step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path

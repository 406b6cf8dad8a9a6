"""The `reward` metric of `tuneforge eval`: replies scored by a reward adapter (a `task: reward` run on the same
base model), so PPO policies, the untouched model and prompted baselines are compared on the same prompts by the
reward they were trained for, with the harness's bootstrap and paired intervals.

What is scored is the task's own prompt as raw text followed by the reply, `prompt + " " + reply` tokenised as
the preference tasks tokenise a raw pair (data/preferences.py): the text a PPO rollout with `template: raw` shows
the reward model. A system that was prompted with an instruction is scored on the same text (the instruction is
not part of it), so every system is judged on the same opening. The reply comes back from generation stripped of
surrounding whitespace, so a continuation the policy began with a space is scored exactly as in the rollout;
one that began with punctuation gets a space before it.

The reward adapter is attached once per directory as one more frozen adapter with its scalar head
(train/ppo_rewards.py) and runs with only itself active; the base weights are the ones every system shares.
"""
from __future__ import annotations

import torch

from ..data.padding import pad as pad_rows
from ..data.preferences import encode_prompt, encode_reply
from ..methods import list_adapters
from ..train.ppo_rewards import attach_reward_adapter, reward_head_scores
from .report import adapter_dir_name

_HEADS = "_tuneforge_reward_heads"


def reward_adapter_name(adapter_dir) -> str:
    return adapter_dir_name(adapter_dir, "reward")


def reward_head(model, adapter_dir):
    """(adapter name, scalar head) of the reward adapter in `adapter_dir`, attached to `model` on first use."""
    name = reward_adapter_name(adapter_dir)
    heads = getattr(model, _HEADS, None)
    if heads is None:
        heads = {}
        object.__setattr__(model, _HEADS, heads)
    if name not in heads or name not in list_adapters(model):
        heads[name] = attach_reward_adapter(model, adapter_dir, name)
    return name, heads[name]


def reward_token_ids(tokenizer, prompt: str, reply: str) -> list[int]:
    """prompt + " " + reply as the reward model reads a raw pair (an empty reply: the prompt alone)."""
    ids = encode_prompt(tokenizer, prompt, "raw")
    return ids + (encode_reply(tokenizer, prompt, reply, "raw") if reply else [])


@torch.no_grad()
def reward_scores(model, tokenizer, adapter_dir, prompts: list[str], replies: list[str],
                  batch_size: int = 8) -> list[float]:
    """One reward per (prompt, reply), in input order. Call it with the adapters enabled (not inside
    `disable_adapters`): the reward adapter is made the only active one for the forward pass."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    name, head = reward_head(model, adapter_dir)
    rows = [reward_token_ids(tokenizer, p, r) for p, r in zip(prompts, replies)]
    if any(not ids for ids in rows):
        raise ValueError("an empty prompt and reply: nothing for the reward model to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_rows(rows[start : start + batch_size], pad, side="right")
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out += reward_head_scores(model, head, name, ids, mask, positions).tolist()
    finally:
        model.train(was_training)
    return out

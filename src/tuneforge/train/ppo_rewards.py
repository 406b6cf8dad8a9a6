"""The rewards PPO can train against: a reward adapter on the policy's own base, or a Python function.

Both are called as reward(model, rollout) -> one score per response (see `tuneforge.train.ppo.sample` for the
rollout's fields). A reward adapter is a model trained with `task: reward` on the same base: attached as a second
adapter with its scalar head, it scores the policy's tokens as they are, with no second copy of the weights.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..errors import AdapterMismatch, TuneforgeError

REWARD_ADAPTER = "reward"


def attach_reward_adapter(model: nn.Module, adapter_dir, name: str = REWARD_ADAPTER) -> nn.Linear:
    """Add a reward adapter (trained with `task: reward` on this base) as adapter `name`, frozen, and return its
    scalar head. The head was saved as a modules_to_save copy of the classifier's `score`; a causal LM has no such
    module, so it becomes a Linear applied by `AdapterReward` to the last real token's hidden state."""
    from ..io.adapter_files import base_name_of, method_for_peft_config, read_adapter_config, read_adapter_weights
    from ..methods import active_adapters, add_adapter, load_adapter_state_dict, mark_trainable, set_active_adapters
    from ..methods.api import pop_saved_module_states

    body = read_adapter_config(adapter_dir)
    saved_for, base = body.get("base_model_name_or_path"), base_name_of(model)
    if saved_for and base and saved_for != base:
        raise AdapterMismatch(f"{adapter_dir}: reward adapter trained on {saved_for!r}, policy base is {base!r}")
    cfg = method_for_peft_config(body).config_from_peft(body)
    state = read_adapter_weights(adapter_dir)
    heads = pop_saved_module_states(cfg, state)
    head_state = {k: v for module in heads.values() for k, v in module.items()}
    if "weight" not in head_state or head_state["weight"].shape[0] != 1:
        raise AdapterMismatch(f"{adapter_dir}: no scalar reward head saved with this adapter (train it with "
                              "task: reward and modules_to_save: [score])")
    policy = active_adapters(model)
    if heads:
        cfg = cfg.replace(modules_to_save=None)
    add_adapter(model, cfg, name)
    load_adapter_state_dict(model, state, name)
    set_active_adapters(model, policy)
    if policy:
        mark_trainable(model, policy[0])
    else:  # nothing trains (an evaluation): the reward adapter stays frozen too
        model.requires_grad_(False)
    weight = head_state["weight"]
    head = nn.Linear(weight.shape[1], 1, bias="bias" in head_state).requires_grad_(False)
    head.load_state_dict(head_state)
    return head.to(next(model.parameters()).device)


class AdapterReward:
    """r(x, y) = head(h_last), h from the base with only the reward adapter active; pooled like transformers'
    sequence classifiers pool (the last real token), with the response's stop token left out as in training."""

    def __init__(self, model: nn.Module, adapter_dir, name: str = REWARD_ADAPTER):
        self.name = name
        self.head = attach_reward_adapter(model, adapter_dir, name)

    def __call__(self, model, batch: dict) -> torch.Tensor:
        return reward_head_scores(model, self.head, self.name, batch["input_ids"], batch["score_mask"],
                                  batch["position_ids"])


@torch.no_grad()
def reward_head_scores(model, head: nn.Linear, name: str, input_ids, mask, position_ids) -> torch.Tensor:
    """One score per row: `head` on the hidden state of the row's last token with mask 1, computed with only
    adapter `name` active; the adapters active before are active again afterwards."""
    from ..methods import active_adapters, set_active_adapters

    before = active_adapters(model)
    set_active_adapters(model, [name])
    try:
        hidden = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
    finally:
        set_active_adapters(model, before)
    last = (torch.arange(mask.shape[1], device=mask.device) * mask).argmax(-1)
    return head(hidden[torch.arange(mask.shape[0]), last].float()).squeeze(-1)


class FunctionReward:
    """r(x, y) = fn(prompt texts, response texts), the responses decoded without their stop token."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, model, batch: dict) -> torch.Tensor:
        scores = checked_rewards(self.fn, batch["prompts"], batch["responses"])
        return torch.tensor(scores, dtype=torch.float32, device=batch["input_ids"].device)


def checked_rewards(fn: Callable, prompts: list[str], responses: list[str]) -> list[float]:
    """fn's scores, required to be one finite number per response."""
    scores = list(fn(prompts, responses))
    name = getattr(fn, "__name__", repr(fn))
    if len(scores) != len(responses):
        raise TuneforgeError(f"reward function {name} returned {len(scores)} scores for {len(responses)} responses")
    out = [float(s) for s in scores]
    if not all(math.isfinite(s) for s in out):
        raise TuneforgeError(f"reward function {name} returned a score that is not a finite number: {out}")
    return out

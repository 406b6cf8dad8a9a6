"""Sampling from the policy and scoring its own samples, for the loops that train on them (PPO, GRPO).

Generation used for training lives here, beside the training code, rather than in eval/ (a later layer): left-
padded prompts through the model's `generate`, and the per-token log-probabilities (of the same tempered
distribution), entropies and, for PPO, values of the sampled responses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.padding import pad as pad_rows
from ..models.stop_tokens import generation_pad_id, stop_token_ids
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


def token_logps(model, batch: dict, rows, temperature: float, micro: int, grad: bool = False) -> torch.Tensor:
    """log pi(o_t) of the given rows (B' x T), in micro-batches, without grad unless asked (old policy and
    reference passes)."""
    parts = []
    with torch.set_grad_enabled(grad):
        for chunk in rows.split(micro):
            parts.append(policy_outputs(model, batch, chunk, temperature, values=False)[0])
    return torch.cat(parts)

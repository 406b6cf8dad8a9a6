"""On-policy preference pairs: sample several replies per prompt from the policy, score each with a reward
adapter, keep the best as `chosen` and the worst as `rejected` (best-of-n / worst-of-n, as iterative and online
DPO build their pairs). DPO on pairs the policy itself wrote moves what it generates; pairs of someone else's text
(e.g. labelled SST-2 sentences) can be learnt on held-out pairs without changing the policy's own replies.

The replies are sampled with the adapters as loaded (the untouched base, or a policy adapter) before the reward
adapter joins the model, and scored as `reward_metric` scores them: prompt + " " + reply, the text a raw DPO
pair tokenises. The records written, {prompt, chosen, rejected, chosen_reward, rejected_reward}, are the
`{prompt, chosen, rejected}` pairs `task: dpo` (template: raw) reads.

`context` (a template holding "{prompt}", e.g. an instruction or a prefix that steers the replies) adds context
distillation (Askell et al. 2021, https://arxiv.org/abs/2112.00861; Snell et al. 2022,
https://arxiv.org/abs/2209.15189): as many replies again are sampled from the prompt inside that context, all
of them are scored against the bare prompt, and the best and worst of the pooled replies make the pair, so DPO
teaches the model to write from the bare prompt what it writes when prompted (and the best of it)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .generation import generate_with
from .reward_metric import reward_scores


def best_of_n_pairs(model, tokenizer, reward_adapter, prompts: list[str], *, samples: int = 4,
                    max_new_tokens: int = 16, temperature: float = 1.0, top_p: float = 1.0, chat: bool = False,
                    min_margin: float = 0.0, batch_size: int = 16, seed: int = 0, context: str | None = None,
                    progress=None) -> list[dict]:
    """One pair per prompt whose best and worst sampled replies differ in text and in reward by more than
    `min_margin` (the others are dropped: they carry no preference). With `context`, `samples` more replies per
    prompt come from `context` with "{prompt}" replaced by the prompt (see the module docstring); the pair's prompt
    is still the bare one. `progress(done, total)` is called per batch of prompts."""
    if samples < 2:
        raise ValueError(f"samples must be at least 2 to make a pair, got {samples}")
    if context is not None and "{prompt}" not in context:
        raise ValueError(f"the context must hold {{prompt}} where the prompt goes, got {context!r}")
    views = [lambda p: p] + ([lambda p: context.replace("{prompt}", p)] if context is not None else [])
    per_prompt = samples * len(views)
    torch.manual_seed(seed)
    replies: list[str] = []
    step = max(1, batch_size // per_prompt)
    for start in range(0, len(prompts), step):
        chunk = [view(p) for p in prompts[start : start + step] for view in views for _ in range(samples)]
        replies += generate_with(model, tokenizer, chunk, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=temperature, top_p=top_p, chat=chat, batch_size=len(chunk))
        if progress is not None:
            progress(min(start + step, len(prompts)), len(prompts))
    repeated = [p for p in prompts for _ in range(per_prompt)]
    scores = reward_scores(model, tokenizer, reward_adapter, repeated, replies, batch_size=batch_size)
    pairs = []
    for i, prompt in enumerate(prompts):
        rows = list(zip(scores[i * per_prompt : (i + 1) * per_prompt], replies[i * per_prompt : (i + 1) * per_prompt]))
        rows = [(s, r) for s, r in rows if r]  # an empty reply is nothing to prefer
        if len(rows) < 2:
            continue
        (best, chosen), (worst, rejected) = max(rows), min(rows)
        if chosen == rejected or best - worst <= min_margin:
            continue
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_reward": best,
                      "rejected_reward": worst})
    return pairs


def write_pairs(pairs: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tmp.replace(path)
    return path

"""Likelihood scores from a causal LM: the loss of a reference reply given its prompt, the choice a model
prefers among fixed answers, and the perplexity of plain text.

    nll(answer | prompt) = - sum_{t in answer} log p(x_t | x_<t)        loss = sum nll / sum answer tokens

Replies are scored through the tokenizer's chat template exactly as they are generated, and only the tokens of
the final assistant turn count (in a few-shot prompt the demonstrations' answers are context, not scored).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import IGNORE, collate_causal, tokenize_messages


def last_turn_example(tokenizer, conversation: list[dict], answer: str, max_length: int | None = None) -> dict:
    """`{"input_ids", "labels"}` of conversation + the assistant answer, labels kept on the answer's tokens only
    (its content and end-of-turn token): the last run of trained labels."""
    messages = list(conversation) + [{"role": "assistant", "content": answer}]
    example = tokenize_messages(tokenizer, messages, train_on="assistant")
    ids, labels = example["input_ids"], example["labels"]
    end = max(i for i, label in enumerate(labels) if label != IGNORE) + 1 if any(x != IGNORE for x in labels) else 0
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    labels = [IGNORE] * start + labels[start:end] + [IGNORE] * (len(labels) - end)
    if max_length is not None and len(ids) > max_length:  # keep the answer: cut the prompt from the left
        cut = len(ids) - max_length
        ids, labels = ids[cut:], labels[cut:]
        labels[0] = IGNORE
    return {"input_ids": ids, "labels": labels}


def text_example(tokenizer, text: str, max_length: int = 1024) -> dict:
    """Plain text (no chat template) with every token but the first scored."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
    return {"input_ids": ids, "labels": [IGNORE] + ids[1:]}


@torch.no_grad()
def sequence_nll(model, examples: list[dict], pad_token_id: int, batch_size: int = 8,
                 progress: bool = True) -> list[tuple[float, int]]:
    """(summed nll, scored tokens) per example, in input order. Batches examples of similar length; applies
    the output head only at scored positions when the model allows it (see train/tasks/sft.py). A progress bar
    (stderr) counts the examples: scoring every choice of a full validation split takes minutes on a CPU."""
    from tqdm.auto import tqdm

    from ..train.tasks.base import batch_context
    from ..train.tasks.sft import fused_head_parts

    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = fused_head_parts(model)
    bar = tqdm(total=len(examples), disable=not progress, desc="scoring", unit="ex", dynamic_ncols=True,
               leave=False)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate_causal([examples[i] for i in chunk], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
            shifted = batch["labels"][:, 1:]
            keep = shifted != IGNORE
            with batch_context(model, batch):
                if parts is None:
                    logits = model(**inputs, use_cache=False).logits[:, :-1][keep]
                else:
                    base, head = parts
                    logits = head(base(**inputs, use_cache=False).last_hidden_state[:, :-1][keep])
            nll = F.cross_entropy(logits.float(), shifted[keep], reduction="none")
            rows = keep.nonzero()[:, 0]
            sums = torch.zeros(len(chunk), device=nll.device).index_add_(0, rows, nll)
            counts = keep.sum(1)
            for j, i in enumerate(chunk):
                results[i] = (float(sums[j]), int(counts[j]))
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return results


def mean_loss(scores: list[tuple[float, int]]) -> dict[str, float]:
    """Token-weighted mean nll over examples, and its perplexity exp(loss)."""
    total, count = sum(s for s, _ in scores), sum(n for _, n in scores)
    if count == 0:
        return {}
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}


def choose(model, tokenizer, conversations: list[list[dict]], choices: list[str], batch_size: int = 8,
           pad_token_id: int | None = None) -> tuple[list[int], list[list[float]]]:
    """For each conversation, the index of the choice with the lowest summed nll, and all the nlls."""
    pad = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    examples = [last_turn_example(tokenizer, conv, choice) for conv in conversations for choice in choices]
    scores = sequence_nll(model, examples, pad, batch_size)
    k = len(choices)
    nlls = [[scores[i * k + j][0] for j in range(k)] for i in range(len(conversations))]
    return [min(range(k), key=row.__getitem__) for row in nlls], nlls

"""Pseudo-labels: the model's class probabilities over unlabelled examples, and which of them to keep.

Prediction lives here, in train/, because self-training calls it between training rounds and train/ must not
import eval/ (which comes later in the layer order). It is the classifier's softmax over `task.logits`, in eval
mode, without gradients, batched by similar length so little padding is computed.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .tasks.base import batch_context


def predict_proba(model, task, examples: list[dict], batch_size: int, *, amp=nullcontext,
                  progress: bool = True, desc: str = "pseudo-labelling", temperature: float = 1.0) -> torch.Tensor:
    """(len(examples), classes) float32 probabilities, in the order of `examples`: softmax(logits / temperature)
    (distillation's softened targets; 1: the model's own probabilities)."""
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no examples to predict")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].get("input_ids", ())))
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), amp(), tqdm(total=len(examples), disable=not progress, desc=desc, unit="ex",
                                          dynamic_ncols=True) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = task.collate([examples[i] for i in chunk])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with batch_context(model, batch):
                    probs = (task.logits(model, batch).float() / temperature).softmax(-1).cpu()
                for row, i in zip(probs, chunk):
                    out[i] = row
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return torch.stack(out)  # type: ignore[arg-type]


def select(probs: torch.Tensor, threshold: float, balance: bool = False,
           max_count: int | None = None) -> tuple[list[int], list[int]]:
    """(indices, labels) of the pseudo-labels to keep, indices ascending: predictions whose probability is at
    least `threshold`; with `balance`, the k most confident of every class, k = the smallest class's count; at
    most `max_count` in all (the most confident; balanced: max_count // classes per class). Ties in confidence
    go to the earlier index, so the choice is a function of the probabilities alone."""
    confidence, predicted = probs.max(-1)
    above = [i for i in range(len(probs)) if float(confidence[i]) >= threshold]

    def most_confident(indices: list[int], k: int | None) -> list[int]:
        ranked = sorted(indices, key=lambda i: (-float(confidence[i]), i))
        return ranked if k is None else ranked[:k]

    if balance:
        classes = probs.shape[-1]
        per_class = [[i for i in above if int(predicted[i]) == c] for c in range(classes)]
        k = min(len(members) for members in per_class)
        if max_count is not None:
            k = min(k, max_count // classes)
        keep = [i for members in per_class for i in most_confident(members, k)]
    else:
        keep = most_confident(above, max_count)
    keep.sort()
    return keep, [int(predicted[i]) for i in keep]


def class_counts(labels: list[int], names: list[str]) -> dict[str, int]:
    """{class name: how many of `labels`} over every class, zeros included."""
    return {name: sum(1 for y in labels if y == c) for c, name in enumerate(names)}


def agreement(predicted: list[int], hidden: list[int | None]) -> tuple[float | None, int]:
    """(share of predictions equal to the hidden label, how many had one); (None, 0) when none had one."""
    pairs = [(p, h) for p, h in zip(predicted, hidden) if h is not None]
    if not pairs:
        return None, 0
    return sum(p == h for p, h in pairs) / len(pairs), len(pairs)

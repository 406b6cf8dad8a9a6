"""Per-parameter learning rates: a separate rate for a new task head, and layer-wise decay down the blocks.

Why: a classifier head starts random, while the blocks below it start from pre-training. One small learning rate
leaves the head near its random start for much of a short run; one large rate unlearns the blocks. So the head may
get its own rate (`train.head_learning_rate`), and the blocks may get rates that shrink geometrically towards the
input (`train.layer_lr_decay` = d; layer-wise learning-rate decay, Howard & Ruder 2018 "discriminative
fine-tuning", https://arxiv.org/abs/1801.06146; as in ELECTRA, https://arxiv.org/abs/2003.10555, and BEiT):

    block i of L (0-based, input side first):   lr * d ** (L - i)
    parameters before the first block (embeddings):   lr * d ** (L + 1)
    parameters after the last block (final norm, pooler, head):   lr
    the task head (classifier / score / qa_outputs), when head_learning_rate is set:   head_learning_rate

Blocks are found by their numbered path (`encoder.layer.3.`, `model.layers.3.`; methods/targeting.layer_index).
"Before the first block" is module order: the parameters `named_parameters` lists before the first block's
(a tied output head shares the input embeddings' tensor and is listed there once). The rates are each group's
base lr: the schedule's warm-up and decay multiply all of them alike. Every group a method returns (LoRA+) is
split the same way, its own lr standing for `lr` above.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..methods.subset import TASK_HEADS
from ..methods.targeting import layer_index


def is_head(name: str) -> bool:
    """A task head's parameter: `classifier.weight`, or an adapter's copy `classifier.modules_to_save.x.weight`."""
    return name.split(".")[0] in TASK_HEADS


def lr_factors(model: nn.Module, layer_decay: float | None) -> dict[int, float]:
    """id(parameter) -> factor on its group's lr from the layer-wise decay (all 1.0 when layer_decay is None)."""
    named = list(model.named_parameters())
    if layer_decay is None:
        return {id(p): 1.0 for _, p in named}
    index = {n: layer_index(n) for n, _ in named}
    blocks = sorted({i for i in index.values() if i is not None})
    if not blocks:
        raise ConfigError(f"layer_lr_decay needs numbered transformer blocks; {type(model).__name__} has none",
                          key="train.layer_lr_decay")
    top = blocks[-1] + 1
    out, seen_block = {}, False
    for name, p in named:
        i = index[name]
        seen_block = seen_block or i is not None
        depth = (top - i) if i is not None else (0 if seen_block else top + 1)
        out[id(p)] = float(layer_decay) ** depth
    return out


def scale_groups(model: nn.Module, groups: list[dict], head_lr: float | None,
                 layer_decay: float | None) -> list[dict]:
    """`groups` (AdamW groups, each with its lr) split so each part has one rate: the head's parameters get
    head_lr (when set), the others their group's lr times the layer-wise factor. Parts keep their group's other
    settings; within a group the part at its unchanged lr comes first (the run logs the first group's lr)."""
    if head_lr is None and layer_decay is None:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    factors = lr_factors(model, layer_decay)
    out, heads = [], 0
    for group in groups:
        parts: dict[float, list] = {}
        for p in group["params"]:
            head = head_lr is not None and is_head(names.get(id(p), ""))
            heads += head
            rate = float(head_lr) if head else group["lr"] * factors.get(id(p), 1.0)
            parts.setdefault(rate, []).append(p)
        for rate in sorted(parts, key=lambda r: r != group["lr"]):
            out.append({**group, "lr": rate, "params": parts[rate]})
    if head_lr is not None and not heads:
        raise ConfigError(f"head_learning_rate is set, but {type(model).__name__} has no trainable task head "
                          f"({' / '.join(TASK_HEADS)}); load it with kind: sequence-classification, or unset it",
                          key="train.head_learning_rate")
    return out

"""Supervised fine-tuning of a causal LM: next-token cross-entropy on the target (label != -100) tokens.

    loss_sum = sum_{t : labels[t+1] != -100} -log softmax(W h_t)[labels[t+1]]

Why the head is applied by hand: `model(...).logits` is a (batch, seq, vocab) fp32 tensor; at a 49k vocab and
2k tokens that is 400 MB per row, most of it for prompt and pad positions that carry no loss. We run the base
transformer, keep only the hidden states whose next token is a target, and apply the output embedding to those,
in chunks, so at most `chunk_size x vocab` logits exist at once: a plain linear head computes each chunk's loss
and gradient in one pass (train/head_loss.py); any other head recomputes its chunk's logits during backward.
Models whose head does more than a linear map (logit soft-capping, logit scaling) or whose layout we do not know
use the plain full-logits path.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...models.packed_attention import PACKED_SDPA, packed_inputs, packed_rows
from ...registry import TASKS
from ..head_loss import linear_cross_entropy
from .base import BaseTask

IGNORE = -100
# model types whose causal-LM head is exactly `lm_head(last_hidden_state)`
FUSED_HEAD_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo", "olmo2", "starcoder2", "gpt_neox", "gpt2"}
)


def fused_head_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(base transformer, output head) when the fused path is known to equal the model's own logits."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FUSED_HEAD_TYPES:
        return None
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if prefix else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None:
        return None
    return base, head


@TASKS.register("sft")
class SFTTask(BaseTask):
    """Causal-LM SFT over chat, alpaca or templated records, one data set or a mixture (see
    `tuneforge.data.load_examples`)."""

    name = "sft"

    def __init__(self, pad_token_id: int | None = None, chunk_size: int = 256, fused_head: bool | None = None,
                 packed_attention: bool = True):
        self.pad_token_id = pad_token_id
        self.chunk_size = chunk_size
        self.fused_head = fused_head  # None: use it when the model type is known; False: always full logits
        self.packed_attention = packed_attention  # packed rows attend per example (models/packed_attention.py)

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        """Tokenise train / validation records (limit_train / limit_eval subsets; a multi-task mixture sampled
        by its rates); pack rows of data.max_length when data.packing is on."""
        from ...data import load_examples, pack_examples

        data = run_cfg.data
        if self.pad_token_id is None:
            self.pad_token_id = tokenizer.pad_token_id
        splits, self.report = [], {}
        for split in ("train", "validation"):
            stats: dict = {}
            examples = load_examples(data, tokenizer, split, stats=stats, budget_rows=stream_budget(run_cfg))
            if stats.get("records"):
                self.report[split] = {"records": stats["records"], "examples": stats.get("kept", len(examples)),
                                      "dropped": stats.get("dropped", 0), "truncated": stats.get("truncated", 0)}
            splits.append(pack_examples(examples, data.max_length) if data.packing and examples else examples)
        return splits[0], splits[1]

    def data_report(self) -> dict:
        """Records read, examples kept, dropped and truncated per split (see train/data_report.py)."""
        return dict(getattr(self, "report", {}))

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from ...data import collate_causal

        batch = collate_causal(examples, self.pad_token_id)
        batch["num_tokens"] = torch.tensor(sum(len(ex["input_ids"]) for ex in examples))
        return batch

    def num_targets(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())  # flattening rows (flash-attn) keeps this count

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if "seq_lens" in batch:  # packed rows: no mask; the model's attention backend reads the example lengths
            inputs, labels, backend = packed_inputs(model, batch, per_example=self.packed_attention)
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
            labels, backend = batch["labels"], None
        shifted = labels[:, 1:]
        keep = shifted != IGNORE
        scope = packed_rows() if backend == PACKED_SDPA else contextlib.nullcontext()
        parts = fused_head_parts(model) if self.fused_head is not False else None
        if parts is None:
            with scope:
                logits = model(**inputs, use_cache=False).logits[:, :-1]
            return F.cross_entropy(logits[keep].float(), shifted[keep], reduction="sum")
        base, head = parts
        with scope:
            hidden = base(**inputs, use_cache=False).last_hidden_state[:, :-1][keep]
        targets = shifted[keep]
        if _plain_linear(head, hidden):
            return linear_cross_entropy(hidden, head.weight, head.bias, targets, self.chunk_size)
        recompute = torch.is_grad_enabled() and hidden.shape[0] > self.chunk_size
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], self.chunk_size):
            h, t = hidden[start : start + self.chunk_size], targets[start : start + self.chunk_size]
            if recompute:
                total = total + checkpoint(_head_loss, head, h, t, use_reentrant=False)
            else:
                total = total + _head_loss(head, h, t)
        return total


def stream_budget(run_cfg) -> int | None:
    """Rows a streamed data set must fill: every micro-batch of train.max_steps steps on every process."""
    import os

    train = run_cfg.train
    if not run_cfg.data.streaming or train.max_steps is None:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return train.max_steps * train.micro_batch_size * train.grad_accum_steps * world


def _head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def _plain_linear(head: nn.Module, hidden: torch.Tensor) -> bool:
    """A dense nn.Linear head without hooks, in the hidden states' dtype and outside autocast: the head whose
    loss and gradients `linear_cross_entropy` computes in one pass (any other head is called as a module)."""
    return (type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
            and head.weight.dtype == hidden.dtype and not torch.is_autocast_enabled(hidden.device.type))

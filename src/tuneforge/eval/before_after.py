"""Before/after: does the fine-tune beat the base model it started from?

One model holds both: "before" runs with the adapters disabled (the untouched base), "after" with them
active, on the same validation examples: eval loss over the trained tokens, and ROUGE-L (rouge-score) of
greedy replies to a fixed, seeded sample of validation prompts against their reference answers.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 x 100 (rouge-score, stemmed)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return 100.0 * sum(scores) / max(1, len(scores))


def _prompt_and_reference(record: dict, data_cfg) -> tuple[list[dict], str]:
    from ..data import to_messages

    messages = to_messages(record, data_cfg.format, data_cfg.system_prompt, prompt=data_cfg.prompt,
                           target=data_cfg.target)
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    raise ValueError("a validation record has no assistant reply to compare against")


def _generate(model, tokenizer, conversations, max_new_tokens, batch_size=8) -> list[str]:
    from .generation import generate_with

    # generate_with takes the last user turn (+ one shared system prompt); earlier turns are not replayed.
    users = [c[-1]["content"] for c in conversations]
    systems = {c[0]["content"] for c in conversations if c[0]["role"] == "system"}
    system = systems.pop() if len(systems) == 1 else None
    return generate_with(model, tokenizer, users, max_new_tokens=max_new_tokens, system_prompt=system,
                         batch_size=batch_size)


@torch.no_grad()
def compare_before_after(model, tokenizer, task, run_cfg, eval_examples, *, num_samples=None, max_new_tokens=None,
                         seed=0, out_path=None) -> dict:
    """Eval loss and ROUGE-L with adapters disabled (before) and active (after). Returns and optionally writes
    {"before": {...}, "after": {...}, "samples": [...]}."""
    from ..data import read_records
    from ..methods import disable_adapters

    num_samples = run_cfg.eval.num_samples if num_samples is None else num_samples
    max_new_tokens = run_cfg.eval.max_new_tokens if max_new_tokens is None else max_new_tokens
    batches = [task.collate(eval_examples[i : i + 8]) for i in range(0, len(eval_examples), 8)]
    device = next(model.parameters()).device
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]

    records = read_records(run_cfg.data.validation)
    picked = random.Random(seed).sample(range(len(records)), min(num_samples, len(records)))
    pairs = [_prompt_and_reference(records[i], run_cfg.data) for i in sorted(picked)]
    conversations, references = [c for c, _ in pairs], [r for _, r in pairs]

    model.eval()
    result = {}
    for label in ("before", "after"):
        ctx = disable_adapters(model) if label == "before" else _nothing()
        with ctx:
            metrics = task.evaluate(model, batches)
            replies = _generate(model, tokenizer, conversations, max_new_tokens) if conversations else []
        result[label] = {"eval_loss": metrics.get("eval_loss"), "perplexity": metrics.get("perplexity"),
                         "rougeL": rouge_l(replies, references) if replies else None}
        result[f"{label}_replies"] = replies
    result["samples"] = [
        {"prompt": c[-1]["content"], "reference": r, "before": b, "after": a}
        for c, r, b, a in zip(conversations, references, result.pop("before_replies"), result.pop("after_replies"))
    ]
    result["sizes"] = {"eval_examples": len(eval_examples), "generation_prompts": len(conversations),
                       "max_new_tokens": max_new_tokens}
    if out_path is not None:
        Path(out_path).write_text(json.dumps(result, indent=2))
    return result


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def format_table(result: dict) -> str:
    """A small Markdown table: metric | before | after | change."""
    rows = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    for key, better in (("eval_loss", "lower"), ("perplexity", "lower"), ("rougeL", "higher")):
        b, a = result["before"].get(key), result["after"].get(key)
        if b is None or a is None:
            continue
        rows.append(f"| {key} ({better} is better) | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
    return "\n".join(rows)

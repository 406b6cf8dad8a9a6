"""Scoring systems (the base model, few-shot prompts, adapters) on eval tasks over one loaded base model: what
`evaluate` (harness.py), the forgetting probes (forgetting.py) and WiSE-FT interpolation (interpolate.py) share."""
from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config.eval import REFERENCE_FREE, EvalSystem, EvalTask
from ..errors import ConfigError
from ..io import load_adapter
from ..methods import disable_adapters, list_adapters, set_active_adapters
from ..models import load_model_for, load_tokenizer
from .example_stats import row_difference, row_intervals, row_statistics
from .generation import generate_with
from .icl import random_demonstrations, retrieved_demonstrations, with_demonstrations
from .metrics import classification, text_metrics
from .report import adapter_dir_name, slug, write_jsonl
from .reward_metric import reward_head, reward_scores
from .scoring import choose, last_turn_example, mean_loss, sequence_nll, text_example
from .task_data import answer_of, load_demonstrations, load_task_examples, system_conversation, task_from_data


class EncoderCache:
    """Builds the retrieval encoder on first use only (zero-shot and random runs never load it)."""

    def __init__(self, name: str, cache_dir: Path | None):
        self.name, self.cache_dir, self._encoder = name, cache_dir, None

    def __call__(self):
        if self._encoder is None:
            from .icl import PromptEncoder

            self._encoder = PromptEncoder(self.name, cache_dir=self.cache_dir)
        return self._encoder


def _conversations_with_demos(task: EvalTask, system: EvalSystem, examples, settings, encoder):
    if system.prompt is not None:
        if task.type != "generate" or task.format != "template":
            raise ConfigError(f"system {system.name!r} sets its own prompt, which applies to generate tasks of format "
                              f"'template', not task {task.name!r}", key="eval.systems.prompt")
        examples = [dataclasses.replace(e, conversation=system_conversation(task, system.prompt, e, task.data))
                    for e in examples]
    if not system.shots:
        return [e.conversation for e in examples], [[] for _ in examples]
    pool = load_demonstrations(task, settings.seed)
    if not pool:
        raise ConfigError(f"system {system.name!r} uses {system.shots} demonstrations, but task {task.name!r} has no "
                          "demonstrations file", key="eval.tasks.demonstrations")
    if system.selection == "retrieved":
        chosen = retrieved_demonstrations(encoder(), [e.prompt for e in examples], [p.prompt for p in pool],
                                          system.shots)
    else:
        chosen = random_demonstrations(len(examples), len(pool), system.shots, settings.seed)
    conversations = [
        with_demonstrations(e.conversation, [(pool[j].conversation, answer_of(task, pool[j])) for j in ids])
        for e, ids in zip(examples, chosen)
    ]
    return conversations, [[pool[j].line for j in ids] for ids in chosen]


def _generate(model, tokenizer, conversations, settings, max_new_tokens: int, chat: bool = True) -> list[str]:
    """Replies in input order; prompts of similar length are batched together (less left padding). chat=False:
    each conversation's last turn is continued as plain text."""
    order = sorted(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    inputs = [conversations[i] if chat else conversations[i][-1]["content"] for i in order]
    replies = generate_with(model, tokenizer, inputs, max_new_tokens=max_new_tokens, chat=chat,
                            do_sample=settings.do_sample, temperature=settings.temperature, top_p=settings.top_p,
                            batch_size=settings.batch_size)
    out = [""] * len(conversations)
    for i, reply in zip(order, replies):
        out[i] = reply
    return out


def run_task(model, tokenizer, task: EvalTask, system: EvalSystem, settings, encoder=None) -> tuple[dict, list[dict]]:
    """(metrics, per-example predictions) of one task under one system, with the model as it is now.
    `settings` is the run's EvalConfig (batch size, sampling, default sizes, seed)."""
    examples = load_task_examples(task, task.limit or settings.num_samples, settings.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if task.type == "perplexity":
        scores = sequence_nll(model, [text_example(tokenizer, e.text) for e in examples], pad, settings.batch_size)
        rows = [{"line": e.line, "text": e.text[:200], "nll": s, "tokens": n} for e, (s, n) in zip(examples, scores)]
        return mean_loss(scores), rows
    template = system.template or task.template
    if template == "raw" and system.shots:
        raise ConfigError(f"system {system.name!r} continues raw text: it cannot take demonstrations (use "
                          "template: chat)", key="eval.systems.template")
    conversations, demo_lines = _conversations_with_demos(task, system, examples, settings, encoder)
    rows = [{"line": e.line, "prompt": e.prompt, "references": e.references, "demonstrations": d}
            for e, d in zip(examples, demo_lines)]
    wanted = task.scored_metrics()
    if task.type == "choice":
        predicted, nlls = choose(model, tokenizer, conversations, task.choices, settings.batch_size, pad)
        gold = [e.gold for e in examples]
        metrics = {k: v for k, v in classification(gold, predicted, list(range(len(task.choices)))).items()
                   if k in wanted}
        for row, p, g, scores in zip(rows, predicted, gold, nlls):
            row.update(prediction=task.choices[p], gold=task.choices[g], choice_nll=scores)
        return metrics, rows
    max_new = task.max_new_tokens or settings.max_new_tokens
    if template == "raw" and len(conversations[0]) > 1:
        raise ConfigError(f"system {system.name!r} continues raw text: it cannot take a system message (use "
                          "template: chat)", key="eval.systems.template")
    replies = _generate(model, tokenizer, conversations, settings, max_new, chat=template == "chat")
    by_reference = [m for m in wanted if m not in ("loss", *REFERENCE_FREE)]
    metrics, per_example = text_metrics(by_reference, replies, [e.references for e in examples])
    for row, reply, scores in zip(rows, replies, per_example):
        row.update(prediction=reply, scores=scores)
    if system.prompt is not None:
        for row, conv in zip(rows, conversations):
            row["system_prompt"] = conv[-1]["content"]  # what this system was asked; "prompt" is the task's
    if "loss" in wanted:
        pairs = [last_turn_example(tokenizer, conv, e.references[0]) for conv, e in zip(conversations, examples)]
        losses = sequence_nll(model, pairs, pad, settings.batch_size)
        metrics.update(mean_loss(losses))
        for row, (s, n) in zip(rows, losses):
            row["loss"], row["tokens"] = s / max(1, n), n
    return metrics, rows


def add_rewards(model, tokenizer, task: EvalTask, metrics: dict, predictions: list[dict], batch_size: int) -> None:
    """The reward metric: each reply scored by the task's reward adapter (outside any disable_adapters block),
    into its row's scores and the mean into metrics."""
    values = reward_scores(model, tokenizer, task.reward_adapter, [r["prompt"] for r in predictions],
                           [r["prediction"] for r in predictions], batch_size)
    for row, value in zip(predictions, values):
        row.setdefault("scores", {})["reward"] = value
    metrics["reward"] = sum(values) / len(values)


def adapter_name_for(path) -> str:
    """The name a system's adapter directory is loaded under (once, however often used)."""
    return adapter_dir_name(path, "eval")


def score_systems(model, tokenizer, settings, tasks: list[EvalTask], systems: list[EvalSystem],
                  predictions_dir: Path | None, encoder=None, log=print, on_row=None,
                  resamples: int = 1000, bootstrap_seed: int = 0) -> list[dict]:
    """Rows {task, system, n, shots, selection, adapter, metrics, intervals, vs_first, seconds} for every
    (system, task) pair: `intervals` are bootstrap 95% intervals of the metrics over the task's examples,
    `vs_first` the paired interval of this system minus the first system scored on the task (resamples=0: no
    intervals). `on_row(rows_so_far)` runs after each row (evaluate writes the results so far)."""
    rows, first = [], {}  # first: task name -> (system name, example lines, statistics)
    for task in tasks:  # reward adapters join first, so that base-model rows run with them disabled too
        if "reward" in task.scored_metrics():
            reward_head(model, task.reward_adapter)
    for system in systems:
        if system.adapter is not None:
            name = adapter_name_for(system.adapter)
            if name not in list_adapters(model):
                load_adapter(model, system.adapter, adapter_name=name,
                             allow_pickle=getattr(model, "tuneforge_allow_pickle", False))
            set_active_adapters(model, [name])
        context = disable_adapters(model) if system.adapter is None and list_adapters(model) else nullcontext()
        scored = []
        with context:
            for task in tasks:
                start = time.perf_counter()
                metrics, predictions = run_task(model, tokenizer, task, system, settings, encoder)
                scored.append((task, metrics, predictions, time.perf_counter() - start))
        for task, metrics, predictions, seconds in scored:
            if "reward" in task.scored_metrics():
                start = time.perf_counter()
                add_rewards(model, tokenizer, task, metrics, predictions, settings.batch_size)
                seconds += time.perf_counter() - start
            row = {"task": task.name, "system": system.name, "n": len(predictions), "shots": system.shots,
                   "selection": system.selection if system.shots else None, "adapter": system.adapter,
                   "metrics": metrics, "seconds": round(seconds, 1)}
            if resamples and predictions:
                statistics = row_statistics(task, metrics, predictions)
                lines = [p.get("line") for p in predictions]
                row["intervals"] = row_intervals(statistics, len(predictions), resamples, bootstrap_seed)
                if task.name not in first:
                    first[task.name] = (system.name, lines, statistics)
                elif first[task.name][1] == lines:
                    row["vs_first"] = {"system": first[task.name][0], **row_difference(
                        statistics, first[task.name][2], len(predictions), resamples, bootstrap_seed)}
            rows.append(row)
            shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            log(f"[{task.name} | {system.name}] n={row['n']}  {shown}  ({seconds:.0f}s)")
            if predictions_dir is not None:
                write_jsonl(predictions_dir / f"{slug(task.name)}.{slug(system.name)}.jsonl", predictions)
            if on_row is not None:
                on_row(rows)
    return rows


def default_tasks(cfg) -> list[EvalTask]:
    """The run's own validation data as tasks (one per mixture entry), when eval.tasks is empty."""
    data = cfg.data
    if data.mixture:
        return [task_from_data(s.name, data.for_source(s), s.validation, cfg.eval.metrics)
                for s in data.mixture if s.validation]
    if data.validation is None:
        raise ConfigError("nothing to evaluate: add eval.tasks or set data.validation", key="eval.tasks")
    return [task_from_data(Path(data.validation).parent.name or "validation", data, data.validation,
                           cfg.eval.metrics)]


def default_systems(cfg) -> list[EvalSystem]:
    """The base model zero-shot, and the run's trained adapter when output_dir/adapter exists."""
    systems = [EvalSystem(name="base (zero-shot)")]
    adapter = Path(cfg.output_dir) / "adapter"
    if (adapter / "adapter_config.json").is_file():
        systems.append(EvalSystem(name="fine-tuned", adapter=str(adapter)))
    return systems


def load_base(cfg, **overrides):
    """The run's base model as trained (quantised for QLoRA) and its tokenizer; `overrides` as load_model_for."""
    m = cfg.model
    model = load_model_for(m, **overrides)
    model.tuneforge_allow_pickle = m.allow_pickle  # the adapters evaluated on it follow the same choice
    return model, load_tokenizer(m.name)

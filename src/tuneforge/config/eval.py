"""What the evaluation harness reads from a run config's `eval:` section: the tasks to score, the systems to
compare (zero-shot, few-shot, fine-tuned adapters) and the probes for forgetting. Plain data only, so the
same dataclasses feed YAML, `--set` overrides and the docs (each field's docstring is the string below it).

A task is data + prompt template + metric list, so users add their own in YAML without code:

    tasks:
      - name: scitldr
        data: scitldr:validation
        prompt: "Summarize in one sentence:\\n{document}"
        target: "{summary}"
        references: references
        metrics: [rouge, loss]
        demonstrations: scitldr:train
"""
from __future__ import annotations

import dataclasses

from .data_sets import resolve_data_path
from ..errors import ConfigError

TASK_TYPES = ("generate", "choice", "perplexity")
METRIC_GROUPS = {"rouge": ("rouge1", "rouge2", "rougeL"), "perplexity": ("loss",)}
METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "accuracy", "f1", "loss", "reward")
REFERENCE_FREE = ("reward",)
FORMATS = ("template", "alpaca", "chat")
SELECTIONS = ("random", "retrieved")
TEMPLATES = ("chat", "raw")


def expand_metrics(names: list[str]) -> list[str]:
    """Metric names with the groups spelled out (rouge -> rouge1, rouge2, rougeL; perplexity -> loss)."""
    out: list[str] = []
    for name in names:
        for metric in METRIC_GROUPS.get(name, (name,)):
            if metric not in out:
                out.append(metric)
    return out


@dataclasses.dataclass
class EvalTask:
    """One scored task: where its examples are, how a record becomes a prompt and a reference, what to measure."""

    name: str
    """Short name shown in the results table."""

    data: str
    """Records to score (.jsonl/.json/.csv/.parquet), usually a validation split."""

    type: str = "generate"
    """generate: the model writes a reply, scored against the reference (ROUGE, BLEU, chrF, exact match) and
    optionally by the reference's loss. choice: the model's likelihood picks one of `choices` (accuracy, F1).
    perplexity: the loss of the text `prompt` renders, without a chat template (held general text)."""

    format: str = "template"
    """template (prompt/target fields below), alpaca (instruction, input -> output) or chat (messages; the last
    assistant message is the reference)."""

    prompt: str | None = None
    """User-turn template with {field} placeholders, e.g. "Translate to German:\\n{source}". For perplexity
    tasks, the text to score."""

    target: str | None = None
    """Reference reply template, e.g. "{summary}"; also what demonstrations show as the answer."""

    references: str | None = None
    """Field holding a list of reference texts (multi-reference ROUGE / BLEU / chrF); default: target alone."""

    system_prompt: str | None = None
    """System message put first in every prompt (the model's template default when null)."""

    metrics: list[str] = dataclasses.field(default_factory=lambda: ["rouge"])
    """Any of rouge (= rouge1, rouge2, rougeL), rouge1, rouge2, rougeL, bleu, chrf, exact_match, accuracy, f1,
    loss (mean token loss of the reference, with its perplexity), reward (mean score of `reward_adapter` on the
    task's prompt followed by the reply; needs no reference)."""

    template: str = "chat"
    """chat: the prompt is a user turn of the tokenizer's chat template; raw: the model continues the plain text
    of the prompt (a base-style continuation, as PPO's `template: raw`). A system may set its own."""

    prompt_words: int | None = None
    """Keep only the first N words of the rendered prompt (review openings, as PPO's task.prompt_words)."""

    reward_adapter: str | None = None
    """The `reward` metric's scorer: the adapter of a `task: reward` run on this base model (its scalar head is
    saved with it). It scores the task's own prompt (raw text, as PPO scores a rollout) + " " + the reply."""

    choices: list[str] | None = None
    """choice tasks: the answer texts the model picks among, e.g. ["yes", "no"]."""

    label: str | None = None
    """choice tasks: the record field holding the gold answer, an index into choices or the choice text."""

    limit: int | None = None
    """Score only this many records (a seeded random subset in file order); null = eval.num_samples."""

    demonstrations: str | None = None
    """Records to draw few-shot demonstrations from (the training split: never the scored data)."""

    demonstrations_limit: int | None = 500
    """Draw demonstrations from a seeded subset of this many records (retrieval embeds each once); null = all."""

    max_new_tokens: int | None = None
    """Longest generated reply for this task; null = eval.max_new_tokens."""

    def validate(self) -> None:
        self.data = resolve_data_path(self.data, key="data")
        self.demonstrations = resolve_data_path(self.demonstrations, key="demonstrations")
        if self.type not in TASK_TYPES:
            raise ConfigError(f"unknown task type {self.type!r}; choose one of {', '.join(TASK_TYPES)}", key="type")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}", key="format")
        if (self.format == "template" or self.type == "perplexity") and self.prompt is None:
            raise ConfigError(f"task {self.name!r} needs a prompt template", key="prompt")
        if self.format != "template" and self.type != "perplexity" and (self.prompt or self.target):
            raise ConfigError(f"prompt/target templates apply to format 'template', not {self.format!r}",
                              key="format")
        unknown = [m for m in expand_metrics(self.metrics) if m not in METRICS]
        if unknown:
            known = ", ".join(("rouge", *METRICS))
            raise ConfigError(f"unknown metric {unknown[0]!r}; known: {known}", key="metrics")
        if self.type == "choice":
            if not self.choices or self.label is None:
                raise ConfigError("a choice task needs choices and the label field", key="choices")
        elif self.type == "generate" and self.format == "template" and self.target is None and self.references is None \
                and any(m not in REFERENCE_FREE for m in expand_metrics(self.metrics)):
            raise ConfigError(f"task {self.name!r} has no reference: set target or references (only "
                              f"{', '.join(REFERENCE_FREE)} needs none)", key="target")
        if self.template not in TEMPLATES:
            raise ConfigError(f"unknown template {self.template!r}; choose chat or raw", key="template")
        if "reward" in expand_metrics(self.metrics) and self.type == "generate" and not self.reward_adapter:
            raise ConfigError(f"task {self.name!r} asks for the reward metric: set reward_adapter", key="reward_adapter")
        if self.reward_adapter and self.format != "template":
            raise ConfigError("the reward metric scores a text prompt + reply: it needs format 'template'",
                              key="reward_adapter")
        if self.template == "raw" and (self.format != "template" or self.type != "generate"):
            raise ConfigError("template 'raw' continues a text prompt: it needs type generate and format template",
                              key="template")
        if self.template == "raw" and "loss" in expand_metrics(self.metrics):
            raise ConfigError("the loss metric scores a chat reply; a raw task has no reply turn to score",
                              key="metrics")
        for key in ("limit", "demonstrations_limit", "max_new_tokens", "prompt_words"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be at least 1 (or null)", key=key)

    def scored_metrics(self) -> list[str]:
        """The metrics this task reports, by type: choice -> accuracy/f1, perplexity -> loss."""
        if self.type == "perplexity":
            return ["loss"]
        wanted = expand_metrics(self.metrics)
        if self.type == "choice":
            return [m for m in wanted if m in ("accuracy", "f1")] or ["accuracy"]
        return [m for m in wanted if m not in ("accuracy", "f1")]


@dataclasses.dataclass
class EvalSystem:
    """One row of the results table: the base model prompted zero- or few-shot, or a fine-tuned adapter."""

    name: str
    """Row label, e.g. "few-shot retrieved (k=3)" or "LoRA fine-tuned"."""

    adapter: str | None = None
    """Adapter directory applied to the run's base model; null = the base model itself."""

    shots: int = 0
    """In-context demonstrations put before each prompt as earlier chat turns ("hard prompts")."""

    selection: str = "random"
    """How demonstrations are chosen from the task's pool: random (seeded per example) or retrieved (the
    nearest by embedding similarity to the prompt; Liu et al. 2021, https://arxiv.org/abs/2101.06804)."""

    prompt: str | None = None
    """This system's own user-turn template instead of the task's (a prompting baseline, e.g. "Continue this
    review positively:\n{task_prompt}"): {task_prompt} is the task's rendered prompt, {field} a record field.
    Metrics still score the reply against the task's references (and the reward the task's prompt + reply)."""

    template: str | None = None
    """chat or raw for this system; null = the task's (e.g. an instructed chat prompt on a raw task)."""

    def validate(self) -> None:
        if self.shots < 0:
            raise ConfigError("shots must not be negative", key="shots")
        if self.template is not None and self.template not in TEMPLATES:
            raise ConfigError(f"unknown template {self.template!r}; choose chat or raw (or null)", key="template")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"unknown selection {self.selection!r}; choose random or retrieved", key="selection")

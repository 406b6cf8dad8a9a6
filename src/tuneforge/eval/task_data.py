"""Records of an evaluation task -> what the model sees and what it is scored against.

One record gives a prompt conversation (system message when set, then the user turn from the task's template),
its references (multi-reference when the task names a list field), the gold choice index (choice tasks) or the
text to score (perplexity tasks). Demonstrations for few-shot prompts are built the same way from the task's
demonstration pool, so a demonstration looks exactly like the prompt it precedes.
"""
from __future__ import annotations

import dataclasses

from ..data import fill_template, read_records, select_records, to_messages
from ..data.formatting import split_opening
from ..data.readers import line_of
from ..errors import DataError
from ..config.eval import EvalTask


@dataclasses.dataclass
class TaskExample:
    """One scored record. `conversation` ends with the user turn the model answers."""

    line: int
    conversation: list[dict]
    references: list[str]
    gold: int | None = None
    text: str | None = None
    record: dict | None = None

    @property
    def prompt(self) -> str:
        return self.conversation[-1]["content"] if self.conversation else (self.text or "")


def build_example(task: EvalTask, record: dict, source, line: int) -> TaskExample:
    if task.type == "perplexity":
        return TaskExample(line, [], [], text=fill_template(task.prompt, record, source, line))
    if task.format == "template":
        prompt = fill_template(task.prompt, record, source, line)
        if task.prompt_words is not None:
            prompt = split_opening(prompt, task.prompt_words)[0]
        conversation = [{"role": "user", "content": prompt}]
        reference = fill_template(task.target, record, source, line) if task.target is not None else None
    else:
        messages = to_messages(record, task.format, source=source, line=line)
        if messages[-1]["role"] != "assistant":
            raise DataError("the record's last message is not an assistant reply to score against", file=source,
                            line=line, key="messages")
        conversation, reference = messages[:-1], messages[-1]["content"]
    if task.system_prompt and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": task.system_prompt})
    references = _references(task, record, reference, source, line)
    gold = _gold(task, record, source, line) if task.type == "choice" else None
    return TaskExample(line, conversation, references, gold=gold, record=record)


def system_conversation(task: EvalTask, system_prompt_template: str, example: TaskExample, source) -> list[dict]:
    """The example's conversation with a system's own user-turn template ({task_prompt} = the task's prompt)."""
    fields = {**(example.record or {}), "task_prompt": example.prompt}
    turn = {"role": "user", "content": fill_template(system_prompt_template, fields, source, example.line)}
    return list(example.conversation[:-1]) + [turn]


def _references(task: EvalTask, record: dict, reference: str | None, source, line) -> list[str]:
    if task.references is None:
        return [reference] if reference is not None else []
    value = record.get(task.references)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise DataError(f"'{task.references}' must be a non-empty list of reference texts", file=source, line=line,
                        key=task.references)
    return value


def _gold(task: EvalTask, record: dict, source, line) -> int:
    value = record.get(task.label)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(task.choices):
        return value
    if isinstance(value, str) and value in task.choices:
        return task.choices.index(value)
    raise DataError(f"label {value!r} is neither an index into nor one of the choices {task.choices}", file=source,
                    line=line, key=task.label)


def load_task_examples(task: EvalTask, limit: int | None, seed: int = 0) -> list[TaskExample]:
    """The task's scored examples: a seeded subset of `limit` records (all when None), in file order."""
    records = select_records(read_records(task.data), limit, seed)
    return [build_example(task, rec, task.data, line_of(rec, i)) for i, rec in enumerate(records)]


def answer_of(task: EvalTask, example: TaskExample) -> str:
    """What a demonstration shows as its answer: the gold choice, else the first reference."""
    if task.type == "choice":
        return task.choices[example.gold]
    if not example.references:
        raise DataError(f"task {task.name!r}: a demonstration has no reference answer", file=task.demonstrations,
                        line=example.line)
    return example.references[0]


def load_demonstrations(task: EvalTask, seed: int = 0) -> list[TaskExample]:
    """The demonstration pool (a seeded subset of demonstrations_limit records of task.demonstrations)."""
    if task.demonstrations is None:
        return []
    records = select_records(read_records(task.demonstrations), task.demonstrations_limit, seed)
    return [build_example(task, rec, task.demonstrations, line_of(rec, i)) for i, rec in enumerate(records)]


def task_from_data(name: str, data_cfg, split_path: str, metrics: list[str]) -> EvalTask:
    """An eval task scoring a run's own validation data with the run's layout (when eval.tasks is empty)."""
    fmt = data_cfg.format
    if fmt == "auto":
        if data_cfg.prompt is not None:
            fmt = "template"
        else:
            from ..data import detect_format

            first = read_records(split_path)[0]
            fmt = detect_format(first, split_path, line_of(first, 0))
    task = EvalTask(name=name, data=split_path, format=fmt, prompt=data_cfg.prompt, target=data_cfg.target,
                    system_prompt=data_cfg.system_prompt, metrics=list(metrics) + ["loss"],
                    limit=data_cfg.limit_eval)
    task.validate()
    return task

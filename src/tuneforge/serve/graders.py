"""OpenAI reinforcement-job graders -> GRPO rewards (task.rewards entries of the run config).

    {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}
        -> {name: string_check, field: answer, operation: eq}      (eq, ne, like, ilike)
    {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "evaluation_metric": "fuzzy_match"}
        -> {name: text_similarity, field: answer}                   (difflib's ratio; other metrics are refused)
    {"type": "python", "source": "def grade(sample, item): ..."}
        -> {name: python_grader, source: ...}   only when the server was started with --allow-python-graders: it
           runs the request's code in the job's worker process. Refused otherwise, at job creation.

`input` must be the sampled text ({{sample.output_text}}); `reference` names a field of the training rows
({{item.<field>}}). Other grader types (score_model, label_model, multi) are refused with the supported list.
"""
from __future__ import annotations

import re

from .request_errors import JobRequestError

_ITEM = re.compile(r"^\{\{\s*item\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
_SAMPLE = re.compile(r"^\{\{\s*sample\.output_text\s*\}\}$")
SUPPORTED = ("string_check", "text_similarity", "python")


def _field(grader: dict, key: str) -> str:
    value = grader.get("reference")
    match = _ITEM.match(value) if isinstance(value, str) else None
    if match is None:
        raise JobRequestError("reference must name a field of the training rows, as \"{{item.answer}}\"", key=key)
    return match.group(1)


def grader_rewards(grader, *, allow_python: bool, key: str = "method.reinforcement.grader") -> list[dict]:
    """The task.rewards entries for one OpenAI grader object (checked; see the module docstring)."""
    if not isinstance(grader, dict):
        raise JobRequestError("grader must be an object with a type", key=key)
    kind = grader.get("type")
    if kind not in SUPPORTED:
        raise JobRequestError(f"grader type {kind!r} is not supported here; use one of {', '.join(SUPPORTED)}",
                              key=f"{key}.type")
    known = {"string_check": {"type", "name", "input", "reference", "operation"},
             "text_similarity": {"type", "name", "input", "reference", "evaluation_metric", "pass_threshold"},
             "python": {"type", "name", "source", "image_tag", "pass_threshold"}}[kind]
    unknown = sorted(set(grader) - known)
    if unknown:
        raise JobRequestError(f"unknown field {unknown[0]!r} in a {kind} grader", key=f"{key}.{unknown[0]}")
    if kind == "python":
        if not allow_python:
            raise JobRequestError("python graders run the request's code; this server does not allow it (start it "
                                  "with --allow-python-graders to trust the callers with that)", key=f"{key}.type")
        source = grader.get("source")
        if not isinstance(source, str) or not source.strip():
            raise JobRequestError("a python grader needs source, code defining grade(sample, item)",
                                  key=f"{key}.source")
        try:
            compile(source, "<grader>", "exec")
        except SyntaxError as err:
            raise JobRequestError(f"grader source does not compile: {err}", key=f"{key}.source") from None
        return [{"name": "python_grader", "source": source}]
    if not isinstance(grader.get("input"), str) or not _SAMPLE.match(grader["input"]):
        raise JobRequestError("input must be \"{{sample.output_text}}\" (the sampled reply)", key=f"{key}.input")
    field = _field(grader, f"{key}.reference")
    if kind == "string_check":
        operation = grader.get("operation")
        if operation not in ("eq", "ne", "like", "ilike"):
            raise JobRequestError("operation must be one of eq, ne, like, ilike", key=f"{key}.operation")
        return [{"name": "string_check", "field": field, "operation": operation}]
    metric = grader.get("evaluation_metric", "fuzzy_match")
    if metric != "fuzzy_match":
        raise JobRequestError(f"evaluation_metric {metric!r} is not supported here; use fuzzy_match",
                              key=f"{key}.evaluation_metric")
    return [{"name": "text_similarity", "field": field}]

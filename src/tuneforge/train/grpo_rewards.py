"""GRPO's rewards: built-in checkers of decoded completions and user functions, called so a failure names itself.

A reward is `fn(prompts, completions, **columns) -> list[float]`, one score per completion. `columns` are the
prompt records' other fields, one list entry per completion (TRL's convention), passed only to functions that
take `**kwargs`; a function with two parameters is called as fn(prompts, completions) (PPO's convention).

Built-ins (in `task.rewards` by name, or as a mapping with their options):
    exact_match     1 if the answer (the whole completion stripped, or `pattern`'s first group) equals the
                    record's `field` as text, else 0; `ignore_case`
    numeric_match   1 if the number in the answer (the last number of the completion, or of `pattern`'s first
                    group) is within `tolerance` of the record's `field`, else 0
    format          1 if `pattern` matches the completion (re.search, DOTALL; `fullmatch: true` for the whole
                    text), else 0
    length_penalty  0 up to `max_chars` characters, then falling linearly to -1 at twice that
    text_similarity difflib's ratio (0..1) of the completion (or `pattern`'s group) to the record's `field`
    string_check    OpenAI's string check: `operation` eq / ne / like (contains) / ilike (contains, any case)
                    between the completion and the record's `field`
    python_grader   OpenAI's python grader: `source` defines grade(sample, item) -> float, called with
                    sample = {"output_text": completion} and item = the record's fields. The code is compiled
                    when the config is checked and run only when the first completion is scored (user code: the
                    service accepts it only when started with --allow-python-graders).
"""
from __future__ import annotations

import difflib
import inspect
import math
import re
from typing import Callable

from ..errors import ConfigError, TuneforgeError

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
BUILTIN_OPTIONS = {
    "exact_match": {"field": "answer", "pattern": None, "ignore_case": False},
    "numeric_match": {"field": "answer", "pattern": None, "tolerance": 0.0},
    "format": {"pattern": None, "fullmatch": False},
    "length_penalty": {"max_chars": 200},
    "text_similarity": {"field": "answer", "pattern": None},
    "string_check": {"field": "answer", "operation": "eq"},
    "python_grader": {"source": None},
}
STRING_CHECKS = ("eq", "ne", "like", "ilike")


def _answer(text: str, pattern: re.Pattern | None) -> str | None:
    if pattern is None:
        return text.strip()
    match = pattern.search(text)
    if match is None:
        return None
    return (match.group(1) if match.groups() else match.group(0)).strip()


def _reference(columns: dict, field: str, n: int) -> list:
    if field not in columns:
        raise TuneforgeError(f"needs the record field '{field}' (the prompts' records have: "
                             f"{', '.join(sorted(columns)) or 'no other fields'})")
    return columns[field]


def builtin_reward(name: str, options: dict) -> Callable:
    """The built-in reward `name` with its options (checked here, before any training)."""
    if name not in BUILTIN_OPTIONS:
        raise ConfigError(f"unknown built-in reward {name!r}; built-ins: {', '.join(BUILTIN_OPTIONS)} (or give "
                          "'module:function')", key="task.rewards")
    unknown = set(options) - set(BUILTIN_OPTIONS[name])
    if unknown:
        raise ConfigError(f"reward {name} has no option {sorted(unknown)[0]!r}; options: "
                          f"{', '.join(BUILTIN_OPTIONS[name])}", key="task.rewards")
    opts = {**BUILTIN_OPTIONS[name], **options}
    try:
        pattern = re.compile(opts["pattern"], re.DOTALL) if opts.get("pattern") else None
    except re.error as err:
        raise ConfigError(f"reward {name}: pattern {opts['pattern']!r} is not a regular expression: {err}",
                          key="task.rewards") from None
    if name == "format" and pattern is None:
        raise ConfigError("reward format needs a pattern", key="task.rewards")
    if name == "length_penalty" and not (isinstance(opts["max_chars"], int) and opts["max_chars"] > 0):
        raise ConfigError("reward length_penalty needs max_chars, a positive integer", key="task.rewards")
    if name == "string_check" and opts["operation"] not in STRING_CHECKS:
        raise ConfigError(f"string_check operation must be one of {', '.join(STRING_CHECKS)}", key="task.rewards")
    if name == "python_grader":
        return _python_grader(opts["source"])
    field = opts.get("field")

    def exact_match(prompts, completions, **columns):
        refs = _reference(columns, field, len(completions))
        out = []
        for text, ref in zip(completions, refs):
            got, want = _answer(text, pattern), str(ref).strip()
            if got is not None and opts["ignore_case"]:
                got, want = got.casefold(), want.casefold()
            out.append(float(got == want))
        return out

    def numeric_match(prompts, completions, **columns):
        refs = _reference(columns, field, len(completions))
        out = []
        for text, ref in zip(completions, refs):
            got = _answer(text, pattern)
            numbers = _NUMBER.findall(got or "")
            want = float(ref) if not isinstance(ref, str) else float(_NUMBER.findall(ref)[-1])
            out.append(float(bool(numbers) and abs(float(numbers[-1]) - want) <= opts["tolerance"]))
        return out

    def format(prompts, completions, **columns):  # noqa: A001 - the reward's name in configs
        check = pattern.fullmatch if opts["fullmatch"] else pattern.search
        return [float(check(text.strip() if opts["fullmatch"] else text) is not None) for text in completions]

    def length_penalty(prompts, completions, **columns):
        limit = opts["max_chars"]
        return [-min(1.0, max(0, len(text) - limit) / limit) for text in completions]

    def text_similarity(prompts, completions, **columns):
        refs = _reference(columns, field, len(completions))
        return [difflib.SequenceMatcher(None, _answer(t, pattern) or "", str(r).strip()).ratio()
                for t, r in zip(completions, refs)]

    def string_check(prompts, completions, **columns):
        refs = _reference(columns, field, len(completions))
        op = opts["operation"]
        checks = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "like": lambda a, b: b in a,
                  "ilike": lambda a, b: b.casefold() in a.casefold()}[op]
        return [float(checks(t.strip(), str(r).strip())) for t, r in zip(completions, refs)]

    fn = locals()[name]
    fn.__name__ = name
    return fn


def _python_grader(source) -> Callable:
    """grade(sample, item) from `source`, compiled now, executed on first use (see the module docstring)."""
    if not isinstance(source, str) or not source.strip():
        raise ConfigError("reward python_grader needs source defining grade(sample, item)", key="task.rewards")
    try:
        code = compile(source, "<python_grader>", "exec")
    except SyntaxError as err:
        raise ConfigError(f"reward python_grader: source does not compile: {err}", key="task.rewards") from None
    namespace: dict = {}

    def python_grader(prompts, completions, **columns):
        if "grade" not in namespace:
            exec(code, namespace)  # noqa: S102 - user code by design; gated by the service flag
            if not callable(namespace.get("grade")):
                raise TuneforgeError("python_grader source defines no function grade(sample, item)")
        grade = namespace["grade"]
        return [grade({"output_text": text}, {k: v[i] for k, v in columns.items()})
                for i, text in enumerate(completions)]

    return python_grader


def load_function(spec: str) -> Callable:
    """'module:function' or 'file.py:function' (PPO's loader)."""
    from .tasks.ppo import load_reward_function

    try:
        return load_reward_function(spec)
    except ConfigError as err:
        raise ConfigError(err.message, key="task.rewards") from None


def build_rewards(entries: list) -> list[tuple[str, Callable]]:
    """(name, fn) for each entry of task.rewards: a built-in's name, 'module:function', or a mapping
    {name: built-in, option: value, ...} / {function: 'module:function'}."""
    out = []
    for entry in entries:
        if callable(entry):
            out.append((getattr(entry, "__name__", repr(entry)), entry))
        elif isinstance(entry, str):
            fn = load_function(entry) if ":" in entry else builtin_reward(entry, {})
            out.append((entry, fn))
        elif isinstance(entry, dict):
            options = dict(entry)
            if "function" in options:
                spec = options.pop("function")
                if options:
                    raise ConfigError(f"reward {spec!r}: a function takes no options ({', '.join(options)})",
                                      key="task.rewards")
                out.append((spec, load_function(spec)))
            else:
                name = options.pop("name", None)
                if not isinstance(name, str):
                    raise ConfigError("a reward mapping needs name (a built-in) or function ('module:function')",
                                      key="task.rewards")
                out.append((name, builtin_reward(name, options)))
        else:
            raise ConfigError(f"a reward is a name, 'module:function' or a mapping, not {entry!r}", key="task.rewards")
    return out


def _takes_columns(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _call(fn: Callable, prompts, completions, columns) -> list:
    if _takes_columns(fn):
        return list(fn(prompts, completions, **columns))
    return list(fn(prompts, completions))


def score(name: str, fn: Callable, prompts: list[str], completions: list[str], columns: dict, group: int,
          places: list[str] | None = None) -> list[float]:
    """fn's scores for a batch of groups of `group` completions per prompt, required to be one finite number
    each. On an error the failing prompt is found (groups scored one at a time) and named by `places[g]`
    (e.g. "prompt 12 (line 13)")."""

    def where(g: int) -> str:
        return places[g] if places is not None else f"prompt {g}"

    try:
        scores = _call(fn, prompts, completions, columns)
        bad = len(scores) != len(completions)
    except Exception:  # noqa: BLE001 - located and re-raised with the prompt below
        scores, bad = [], True
    if not bad:
        try:
            values = [float(s) for s in scores]
        except (TypeError, ValueError):
            bad = True
        else:
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise TuneforgeError(f"reward function {name} returned {v} (not a finite number) for {where(i // group)}"
                                         f" (completion {i % group} of {group}): {completions[i]!r}")
            return values
    for g in range(len(completions) // group):
        part = slice(g * group, (g + 1) * group)
        cols = {k: v[part] for k, v in columns.items()}
        try:
            got = _call(fn, prompts[part], completions[part], cols)
        except Exception as err:
            raise TuneforgeError(f"reward function {name} failed on {where(g)}: {type(err).__name__}: {err}") from err
        if len(got) != group:
            raise TuneforgeError(f"reward function {name} returned {len(got)} scores for the {group} completions of "
                                 f"{where(g)}; it must return one per completion")
        try:
            [float(s) for s in got]
        except (TypeError, ValueError) as err:
            raise TuneforgeError(f"reward function {name} returned a score that is not a number for {where(g)}: "
                                 f"{err}") from None
    raise TuneforgeError(f"reward function {name} returned {len(scores)} scores for {len(completions)} completions "
                         "of the whole batch (each prompt alone was fine); it must return one per completion")

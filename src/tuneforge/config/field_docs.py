"""A config dataclass's fields as Markdown rows, from the docstrings written right below each field.

docs/config.md is generated from these (`tuneforge config-docs`), so the reference cannot drift from the code:
a field without a docstring shows up there as an empty description, and a test fails when the committed file
differs from what the classes say.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
import types
import typing


def field_docs(cls) -> dict[str, str]:
    """{field name: docstring} over the class and its dataclass bases (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:] + [None]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def type_name(hint) -> str:
    """A short spelling of a field's type: `int | null`, `list[str]`, `"a" | "b"` for Literals."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]" if args else origin.__name__
    if hint is typing.Any:
        return "any"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def default_text(f: dataclasses.Field) -> str:
    """The default as YAML would spell it; a nested section's default is described by its own table."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return json.dumps(value) if not isinstance(value, str) else (f"`{value}`" if value else '`""`')


def nested_dataclasses(hint) -> list[type]:
    """Dataclass types a field holds (directly, optionally or in a list): they get tables of their own."""
    if dataclasses.is_dataclass(hint):
        return [hint]
    return [c for a in typing.get_args(hint) for c in nested_dataclasses(a)]


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def fields_table(cls, skip: tuple[str, ...] = ()) -> str:
    """| key | type | default | description | for every field of the dataclass `cls`."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        rows.append(f"| `{f.name}` | {_cell(type_name(hints[f.name]))} | {_cell(default_text(f))} | "
                    f"{_cell(docs.get(f.name, ''))} |")
    return "\n".join(rows)

"""Turn a plain mapping into a typed, nested dataclass, or fail naming file:line and key.

One generic validator serves every config section (model, data, train, eval) so the rules are the same
everywhere: unknown keys are errors with a "did you mean" suggestion, values must match the annotation
(int, float, bool, str, Optional, list[...], Literal[...], nested dataclass), ints are accepted where a float
is expected (and must be finite: inf and nan are errors), and so is a string such as "1e-4" (YAML 1.1 reads that
spelling as a string, not a number).
After the fields are set, the dataclass's own `validate()` runs, and a ConfigError it raises with a key is
given the file and line of that key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

from ..errors import ConfigError
from .source import KeyPath, Source

_MISSING = object()


def suggest(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def build_dataclass(cls, mapping, source: Source | None = None, prefix: KeyPath = ()):
    """Validate `mapping` against dataclass `cls` and return an instance.

    `prefix` is the key path of this section in the whole config (("train",)), used in error messages."""
    source = source or Source()
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise source.error(f"expected a mapping of {cls.__name__} fields, got {_describe(mapping)}", prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, raw in mapping.items():
        path = prefix + (str(key),)
        if key not in fields:
            section = f" in section '{'.'.join(prefix)}'" if prefix else ""
            known = ", ".join(fields)
            raise source.error(f"unknown key '{key}'{section}{suggest(key, fields)}; known keys: {known}", path)
        values[key] = convert(raw, hints[key], source, path)
    for name, f in fields.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise source.error(f"missing required key '{name}'", prefix + (name,))
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as err:
            if err.file is not None:
                raise
            key_path = prefix + tuple(err.key.split(".")) if err.key else prefix
            raise source.error(err.message, key_path) from None
    return instance


def convert(value: Any, annotation, source: Source, path: KeyPath):
    """Check (and where lossless, coerce) one value against a type annotation."""
    result = _convert(value, annotation, source, path)
    if result is _MISSING:
        raise source.error(f"expected {type_name(annotation)}, got {_describe(value)}", path)
    return result


def _convert(value, annotation, source: Source, path: KeyPath):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _MISSING
        options = [a for a in args if a is not type(None)]
        for option in options:
            result = _convert(value, option, source, path)
            if result is not _MISSING:
                return result
        return _MISSING
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise source.error(f"{value!r} is not one of {choices}{suggest(value, args)}", path)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, list):
            return _MISSING
        item_type = args[0] if args else Any
        return [convert(v, item_type, source, path) for v in value]
    if origin is dict or annotation is dict:
        return value if isinstance(value, dict) else _MISSING
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, source, path)
    if value is None:
        return _MISSING
    if annotation is bool:
        return value if isinstance(value, bool) else _MISSING
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return _MISSING
        else:
            return _MISSING
        if not math.isfinite(number):  # `.inf`, `.nan`, "Infinity": a run would train to NaN and exit 0
            raise source.error(f"expected a finite number, got {value!r}", path)
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        # `--set output_dir=2024` parses as an int; a number is a fine string, a bool or list is not.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _MISSING
    if isinstance(annotation, type):
        return value if isinstance(value, annotation) else _MISSING
    return value  # an annotation this validator does not model: the dataclass's validate() has the last word


def type_name(annotation) -> str:
    """Readable name of an annotation for error messages: 'int or null', 'list of str', ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
        return f"a list of {plural.get(args[0]) or type_name(args[0])}" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if dataclasses.is_dataclass(annotation):
        return f"a mapping of {annotation.__name__} fields"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}"

"""YAML that remembers where each key was written, so every config error can name file:line and key.

`yaml.safe_load` throws positions away, so we also `compose` the document into nodes and record the line of
every key path. Values given on the command line (`--set a.b=c`) are recorded as coming from `--set`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

KeyPath = tuple[str, ...]


@dataclass
class Source:
    """Where a config came from: the file name and the line of every key path (("train", "epochs") -> 7).
    Paths set by overrides map to the override text instead of a file line."""

    file: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overrides: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: KeyPath) -> tuple[str | None, int | None]:
        """(file, line) for a key path; falls back to the nearest enclosing key that has a position."""
        for n in range(len(path), 0, -1):
            prefix = tuple(path[:n])
            if prefix in self.overrides:
                return f"--set {self.overrides[prefix]}", None
            if prefix in self.lines:
                return self.file, self.lines[prefix]
        return self.file, None

    def error(self, message: str, path: KeyPath) -> ConfigError:
        file, line = self.where(path)
        return ConfigError(message, file=file, line=line, key=".".join(path) or None)


def parse_yaml(text: str, file: str | None = None) -> tuple[Any, Source]:
    """Parse YAML text into plain Python data plus a Source holding each key's line.
    Syntax errors and duplicate keys become ConfigError with the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {err.problem or err}", file=file, line=line) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", file=file) from None
    source = Source(file=file)
    if node is not None:
        _record_lines(node, (), source)
    return data, source


def load_yaml(path: str | Path) -> tuple[Any, Source]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except OSError as err:
        raise ConfigError(f"cannot read config: {err.strerror}", file=str(path)) from None
    return parse_yaml(text, file=str(path))


def _record_lines(node: yaml.Node, prefix: KeyPath, source: Source) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        path = prefix + (key,)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"duplicate key '{key}'", file=source.file, line=line, key=".".join(path))
        seen.add(key)
        source.lines[path] = key_node.start_mark.line + 1
        _record_lines(value_node, path, source)


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """`a.b=c` -> (("a", "b"), c) with c parsed as a YAML scalar (`1e-4` stays a string; the validator turns
    it into a float where a float is expected). `a.b=` sets null."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value", file="--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return tuple(key.split(".")), value


def apply_overrides(data: dict, source: Source, overrides) -> dict:
    """Set each `a.b=c` into the nested mapping (creating sections as needed) and note it in source."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"cannot set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section", file="--set"
                )
            node = child
        node[path[-1]] = value
        source.overrides[path] = text.strip()
    return data

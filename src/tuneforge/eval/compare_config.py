"""The `tuneforge compare` config: one run config shared by every method, plus the list of methods.

    metric: accuracy              # the eval metric the table and plot rank by
    model: {...}                  # every section of a `tuneforge train` config except `method`
    task: {...}
    data: {...}
    train: {...}                  # the budget: epochs / max_steps / seed are the same for every method
    output_dir: runs/compare
    methods:
      - head_only                                   # a registered method with its defaults
      - {name: last_k, k: 2}                        # method settings
      - {name: lora, label: lora-r8, r: 8, train: {learning_rate: 1.0e-3}}   # a row label, per-method train keys
      - {name: full, label: scratch, model: {name: models/random-init}}    # another starting model

A method may change how it is optimised (learning rate, warmup, batch size), never the budget: `epochs`,
`max_steps` and `seed` under a method's `train` are errors, as is any unknown key (file and line named).
A method's `model` keys replace the shared ones: a from-scratch baseline next to the pretrained start.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

from ..config.source import Source, apply_overrides, load_yaml
from ..errors import ConfigError

BUDGET_KEYS = ("epochs", "max_steps", "seed")
OWN_KEYS = ("methods", "metric", "jobs")


@dataclasses.dataclass
class MethodEntry:
    label: str
    """Row name in the table (default: the method name; must be unique)."""
    run_config: object
    """The validated RunConfig this method trains with (shared sections + its method and train overrides)."""
    spec: dict = dataclasses.field(default_factory=dict)
    """The same as written (before defaults are filled in): what a cached result is matched against, so a new
    default field in the config schema does not invalidate finished rows."""


@dataclasses.dataclass
class CompareConfig:
    metric: str
    """Eval metric reported and plotted (accuracy, macro_f1, spearman, ...)."""
    output_dir: Path
    entries: list[MethodEntry]
    shared: dict
    jobs: int = 1
    """Methods trained at once, each in its own process (see tuneforge.eval.compare); the CLI's --jobs wins."""
    total_wall_s: float | None = None
    """Set by a finished `compare` run that trained every method: its whole wall time, for the report."""
    resamples: int = 1000
    """Bootstrap resamples of the intervals in the report (set by `compare`, not read from YAML)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap draw (set by `compare`)."""
    """The shared run-config sections as plain data (what every method was given)."""


def _item_lines(text: str, source: Source) -> None:
    """Record ("methods", i, key...) lines, which the generic YAML line recorder does not reach (lists)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return
    for key_node, value_node in root.value:
        if key_node.value != "methods" or not isinstance(value_node, yaml.SequenceNode):
            continue
        for i, item in enumerate(value_node.value):
            source.lines[("methods", str(i))] = item.start_mark.line + 1
            if isinstance(item, yaml.MappingNode):
                for k, v in item.value:
                    source.lines[("methods", str(i), str(k.value))] = k.start_mark.line + 1
                    if isinstance(v, yaml.MappingNode):
                        for k2, _ in v.value:
                            source.lines[("methods", str(i), str(k.value), str(k2.value))] = k2.start_mark.line + 1


def _entry_source(source: Source, i: int) -> Source:
    """A Source in which the method's own keys point at its list item, so errors name the right line."""
    lines = dict(source.lines)
    item = ("methods", str(i))
    lines[("method",)] = source.lines.get(item)
    for path, line in source.lines.items():
        if path[:2] == item and len(path) > 2:
            rest = path[2:]
            section = rest[0] if rest[0] in ("train", "model") else None
            lines[(section,) + rest[1:] if section else ("method",) + rest] = line
    return Source(file=source.file, lines={k: v for k, v in lines.items() if v is not None}, overrides=source.overrides)


def _entry_fields(raw, i: int, source: Source) -> tuple[str, dict, dict]:
    """(label, method section, train overrides) of one list item."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise source.error("each method is a name or a mapping with a name (e.g. {name: lora, r: 8})",
                           ("methods", str(i)))
    fields = dict(raw)
    label = str(fields.pop("label", fields["name"]))
    train = fields.pop("train", None) or {}
    if not isinstance(train, dict):
        raise source.error("a method's train section must be a mapping", ("methods", str(i), "train"))
    for key in train:
        if key in BUDGET_KEYS:
            raise source.error(f"'{key}' is part of the shared budget and cannot change per method; set it in the "
                               "top-level train section", ("methods", str(i), "train", key))
    model = fields.pop("model", None) or {}
    if not isinstance(model, dict):
        raise source.error("a method's model section must be a mapping", ("methods", str(i), "model"))
    return label, fields, train, model


def compare_config_from_dict(data: dict, source: Source | None = None) -> CompareConfig:
    from ..config import config_from_dict

    source = source or Source()
    if not isinstance(data, dict):
        raise ConfigError("a compare config must be a mapping (metric, methods and run sections)", file=source.file)
    if "method" in data:
        raise source.error("a compare config lists `methods:`, not a single `method:`", ("method",))
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods:
        raise source.error("`methods` must be a non-empty list of method names or mappings", ("methods",))
    metric = data.get("metric", "accuracy")
    if not isinstance(metric, str):
        raise source.error("metric must be the name of an eval metric (accuracy, spearman, ...)", ("metric",))
    jobs = data.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise source.error("jobs must be a whole number >= 1 (methods trained at once)", ("jobs",))
    shared = {k: v for k, v in data.items() if k not in OWN_KEYS}
    entries, labels = [], set()
    for i, raw in enumerate(methods):
        label, method, train, model = _entry_fields(raw, i, source)
        if label in labels:
            raise source.error(f"two methods share the label {label!r}; give one a `label`", ("methods", str(i)))
        labels.add(label)
        run = copy.deepcopy(shared)
        run["method"] = method
        run["train"] = {**(run.get("train") or {}), **train}
        if model:
            run["model"] = {**(run.get("model") or {}), **model}
        run["output_dir"] = str(Path(str(shared.get("output_dir", "runs/compare"))) / "runs" / label)
        entries.append(MethodEntry(label, config_from_dict(copy.deepcopy(run), _entry_source(source, i)), run))
    return CompareConfig(metric=metric, jobs=jobs, output_dir=Path(str(shared.get("output_dir", "runs/compare"))),
                         entries=entries, shared=shared)


def load_compare_config(path, overrides=()) -> CompareConfig:
    """Read and validate a compare YAML (`--set a.b=c` overrides apply to the shared sections)."""
    data, source = load_yaml(path)
    _item_lines(Path(path).read_text(encoding="utf-8"), source)
    if isinstance(data, dict):
        data = apply_overrides(data, source, list(overrides or ()))
    return compare_config_from_dict(data, source)

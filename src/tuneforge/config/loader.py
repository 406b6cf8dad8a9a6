"""`load_config(path, overrides)` -> RunConfig, and `dump_config` to write the resolved config beside a run.

The method section is validated by the method's own config class (found through the METHODS registry, which
imports tuneforge.methods on first use), so this module never names a method; its errors get the file and line of the offending key here.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import METHODS, TASKS
from .schema import RunConfig
from .source import Source, apply_overrides, load_yaml
from .validate import build_dataclass, suggest


def load_config(path: str | Path | None, overrides=()) -> RunConfig:
    """Read a YAML run config (or start from defaults when path is None), apply `section.key=value`
    overrides, and validate everything. Raises ConfigError(file, line, key) on the first problem."""
    if path is None:
        data, source = {}, Source(file=None)
    else:
        data, source = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a mapping of sections (model, method, data, train, ...)",
                          file=source.file, line=1)
    data = apply_overrides(data, source, overrides)
    return config_from_dict(data, source)


def resolve_config(config_or_path, overrides=()):
    """A RunConfig from a YAML path, a mapping, or a RunConfig (overrides apply to all three)."""
    overrides = list(overrides or ())
    if isinstance(config_or_path, (str, os.PathLike)):
        return load_config(config_or_path, overrides)
    if isinstance(config_or_path, RunConfig):
        if not overrides:
            return config_or_path
        config_or_path = dump_config(config_or_path)
    if isinstance(config_or_path, dict):
        source = Source()
        data = copy.deepcopy(config_or_path)  # overrides write into nested sections: keep the caller's intact
        return config_from_dict(apply_overrides(data, source, overrides), source)
    raise ConfigError(f"expected a config path, mapping or RunConfig, got {type(config_or_path).__name__}")


def config_from_dict(data: dict, source: Source | None = None) -> RunConfig:
    """Validate an already-parsed mapping (for configs built in Python)."""
    source = source or Source()
    data = dict(data)
    method_section = data.pop("method", None)
    task_section = data.pop("task", None)
    config = build_dataclass(RunConfig, data, source)
    config.method = build_method(method_section, source)
    config.task, config.task_config = build_task(task_section, source)
    check_sharding(config, source)
    if config.train.base_matmul_dtype != "model" and (config.model.dtype not in ("float32", "auto")
                                                       or config.model.quantization is not None):
        raise source.error("train.base_matmul_dtype: bfloat16 rounds an fp32 base's matmuls; it needs model.dtype "
                           "float32 (or auto on a CPU) and no model.quantization", ("train", "base_matmul_dtype"))
    if config.data.streaming and config.train.max_steps is None:
        raise source.error("data.streaming reads records lazily, so the run length must be given: set "
                           "train.max_steps", ("data", "streaming"))
    return config


def check_sharding(config: RunConfig, source: Source) -> None:
    """Sharding settings the model section rules out, refused before any weight is read."""
    train, model = config.train, config.model
    if train.shard is not True and not train.cpu_offload:
        return
    key = ("train", "shard" if train.shard is True else "cpu_offload")
    if model.device_map is not None:
        raise source.error("model.device_map places the model itself and cannot be combined with sharding "
                           "(train.shard / train.cpu_offload): drop one; sharding already spreads the weights over "
                           "the processes' devices", key)
    if model.quantization == "int8":
        raise source.error("an int8 (LLM.int8()) base cannot be sharded (its row scales live beside the weight and "
                           "change at the first forward); use model.quantization: nf4 (QLoRA) or train.shard: "
                           "false", key)


def build_method(section: Any, source: Source):
    """`{name: lora, r: 8, ...}` -> the method's validated config dataclass."""
    if section is None:
        section = {"name": METHODS.default()}
    elif isinstance(section, str):  # `method: lora` is a fine shorthand for the defaults
        section = {"name": section}
    if not isinstance(section, dict):
        raise source.error("method must be a mapping such as {name: lora, r: 8}", ("method",))
    fields = dict(section)
    name = fields.pop("name", None)
    if not isinstance(name, str):
        raise source.error("the method section needs a name (e.g. name: lora)", ("method", "name"))
    if name not in METHODS:
        known = METHODS.names()
        raise source.error(
            f"unknown method '{name}'{suggest(name, known)}; known methods: {', '.join(known)}", ("method", "name")
        )
    # Type-check with the generic validator first: it knows each key's line and turns "1e-4" into a float.
    config_class = METHODS.get(name).config_class
    typed = build_dataclass(config_class, fields, source, ("method",))
    fields = {key: getattr(typed, key) for key in fields}
    try:
        method_cfg = config_class(**fields)  # what methods.make_method_config does once the keys are known good
        method_cfg.validate()
        return method_cfg
    except ConfigError as err:
        if err.file is not None:
            raise
        key = err.key if err.key in fields else None
        raise source.error(err.message, ("method", key) if key else ("method",)) from None


def build_task(section: Any, source: Source):
    """`task: sft` or `task: {name: dpo, beta: 0.1}` -> (name, the task's validated config or None).

    A task that takes settings declares a `config_class` dataclass; its fields are checked like any other
    section (unknown key -> file, line, key)."""
    if section is None:
        section = {"name": "sft"}
    elif isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise source.error("task must be a name (sft) or a mapping such as {name: dpo, beta: 0.1}", ("task",))
    fields = dict(section)
    name = fields.pop("name", None)
    path = ("task", "name") if "name" in section else ("task",)
    known = TASKS.names()
    if not isinstance(name, str) or name not in known:
        raise source.error(f"unknown task '{name}'{suggest(str(name), known)}; known tasks: {', '.join(known)}", path)
    config_class = TASKS.get(name).config_class  # None: the task takes no settings (train/tasks/base.py)
    if config_class is None:
        if fields:
            key = next(iter(fields))
            raise source.error(f"task '{name}' takes no settings", ("task", key))
        return name, None
    typed = build_dataclass(config_class, fields, source, ("task",))
    validate = getattr(typed, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            if err.file is not None:
                raise
            raise source.error(err.message, ("task", err.key) if err.key in fields else ("task",)) from None
    return name, typed


def dump_config(config: RunConfig) -> dict:
    """The resolved config as plain data, in the layout load_config reads (method flattened with its name),
    so `yaml.safe_dump(dump_config(cfg))` can be loaded again to repeat the run."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "method" and value is not None:
            body = value.to_dict()
            out["method"] = {"name": type(value).method, **body}
        elif f.name == "task_config":
            continue
        elif f.name == "task" and config.task_config is not None:
            out["task"] = {"name": value, **dataclasses.asdict(config.task_config)}
        elif dataclasses.is_dataclass(value):
            out[f.name] = dataclasses.asdict(value)
        else:
            out[f.name] = value
    return out

"""YAML + `--set` overrides -> a typed, validated RunConfig; every error names file:line and key."""
from .data import DataConfig
from .loader import build_method, config_from_dict, dump_config, load_config, resolve_config
from .schema import EvalConfig, ModelConfig, RunConfig, TrainConfig
from .source import Source, apply_overrides, load_yaml, parse_yaml
from .validate import build_dataclass

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "Source",
    "TrainConfig",
    "apply_overrides",
    "build_dataclass",
    "build_method",
    "config_from_dict",
    "dump_config",
    "load_config",
    "load_yaml",
    "parse_yaml",
    "resolve_config",
]

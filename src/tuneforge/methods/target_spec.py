"""The targeting fields the method configs share, declared once: which modules a method adapts (names, a regex,
`all-linear`, block indices, exclusions) and which it trains in full beside the adapter. Names, defaults and
meaning are peft's, so adapter_config.json reads the same in both tools.

A config inherits the groups it supports, so its YAML keys are exactly the ones it always had: LoRA and its
variants take the whole `TargetSpec`; VeRA targets and selects layers; IA3 targets and excludes; bottleneck
adapters target; prompt, prefix and ReFT configs only save modules. `targeting(cfg)` reads them for
`targeting.select_modules` (None for a group a method does not take)."""
from __future__ import annotations

import dataclasses
from typing import Union


@dataclasses.dataclass
class SavedModules:
    modules_to_save: Union[list[str], None] = None
    """Extra modules trained in full and saved with the adapter (a new task head)."""


@dataclasses.dataclass
class LayerSelection:
    layers_to_transform: Union[list[int], int, None] = None
    """Only adapt these transformer block indices."""
    layers_pattern: Union[str, None] = None
    """Name of the block list (layers, h, ...) when layers_to_transform is used on an unusual model."""


@dataclasses.dataclass
class ExcludeModules:
    exclude_modules: Union[list[str], str, None] = None
    """Names or regex never adapted even if targeted."""


@dataclasses.dataclass
class TargetModules:
    target_modules: Union[list[str], str, None] = None
    """Module names (suffix match), a regex (full match), or "all-linear". None: the method's default sites for
    the architecture."""


# dataclass fields come from the last base first: listed so a config reads target_modules, exclude_modules,
# layers_to_transform, layers_pattern, modules_to_save, then its own fields
@dataclasses.dataclass
class TargetSpec(SavedModules, LayerSelection, ExcludeModules, TargetModules):
    """Every targeting field (LoRA and its variants)."""


def targeting(cfg) -> dict:
    """select_modules' targeting arguments from a method config (None for the groups it does not take)."""
    selection = isinstance(cfg, LayerSelection)
    return {"target_modules": cfg.target_modules if isinstance(cfg, TargetModules) else None,
            "exclude_modules": cfg.exclude_modules if isinstance(cfg, ExcludeModules) else None,
            "layers_to_transform": cfg.layers_to_transform if selection else None,
            "layers_pattern": cfg.layers_pattern if selection else None}

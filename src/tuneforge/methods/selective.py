"""Selective fine-tuning: the parameters whose names match a pattern train, everything else stays frozen,
h = f(x; theta_frozen, theta_selected).

The general form of BitFit and of layer freezing (e.g. Lee et al. 2019, "What would Elsa do? Freezing layers
during transformer fine-tuning", https://arxiv.org/abs/1911.03090). Trainable parameters: the sum of the sizes
of the matched tensors. Names are the base model's own (`model.layers.3.mlp.down_proj.weight`), adapter
wrappers left out; storage, switching and merging are the shared subset logic (see subset.py).
"""
from __future__ import annotations

import dataclasses
import re

from ..errors import ConfigError
from ..registry import METHODS
from .base import MethodConfig, check
from .subset import SubsetMethod, name_shapes


@dataclasses.dataclass
class SelectiveConfig(MethodConfig):
    method = "selective"
    trainable_patterns: list[str] = dataclasses.field(default_factory=list)
    r"""Regular expressions, each matched against the whole parameter name (re.fullmatch); a parameter trains when
    any matches. E.g. `.*\.bias`, `model\.norm\.weight`, `model\.layers\.(2|3)\..*`."""

    def validate(self) -> None:
        check(
            isinstance(self.trainable_patterns, list) and len(self.trainable_patterns) > 0
            and all(isinstance(p, str) for p in self.trainable_patterns),
            "trainable_patterns",
            "trainable_patterns must be a non-empty list of regular expressions",
        )
        for pattern in self.trainable_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{pattern!r} is not a regular expression: {exc}", key="trainable_patterns") from None


@METHODS.register("selective")
class Selective(SubsetMethod):
    name = "selective"
    config_class = SelectiveConfig
    paper = "https://arxiv.org/abs/1911.03090"
    formula = "sum of the sizes of the parameters matched by trainable_patterns"

    def select_parameters(self, model, cfg: SelectiveConfig, params) -> list[str]:
        unused = [p for p in cfg.trainable_patterns if not any(re.fullmatch(p, n) for n in params)]
        if unused:
            raise ConfigError(
                f"pattern(s) {unused} match no parameter name (full match); names: {name_shapes(params)}",
                key="trainable_patterns",
            )
        return [n for n in params if any(re.fullmatch(p, n) for p in cfg.trainable_patterns)]

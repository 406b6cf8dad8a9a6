"""Layer freezing as methods, so the trainer never special-cases full fine-tuning or a frozen backbone.

- `full`: every parameter trains, theta' = theta + delta (all N parameters).
- `head_only`: a task head on a frozen backbone, y = head(f_frozen(x)) (linear probing, e.g. Kumar et al. 2022,
  https://arxiv.org/abs/2202.10054): only the classifier / score head trains, or the output embeddings of a
  language model (tied to the input embeddings in SmolLM2, so those train with it).
- `last_k`: the last k transformer blocks and everything above them (final norm, pooler, head) train, the rest
  is frozen (Lee et al. 2019, https://arxiv.org/abs/1911.03090).

All three keep the shared subset storage (see subset.py): the adapter file holds the trained tensors under their
own names (for `full`, the whole model state). A plain transformers model directory comes from
`unload(model, merge=True)` then `model.save_pretrained(dir)`, or `tuneforge.io.merge(base, adapter_dir, out)`.
"""
from __future__ import annotations

import dataclasses
from typing import Union

from ..errors import ConfigError
from ..registry import METHODS
from .base import MethodConfig, check
from .subset import SubsetMethod, head_parameter_names, name_shapes
from .targeting import layer_index


@dataclasses.dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning has no settings."""

    method = "full"


@METHODS.register("full")
class Full(SubsetMethod):
    name = "full"
    config_class = FullConfig
    paper = "https://arxiv.org/abs/1810.04805"
    formula = "all parameters of the model (tied tensors once)"

    def select_parameters(self, model, cfg, params) -> list[str]:
        return list(params)


@dataclasses.dataclass
class HeadOnlyConfig(MethodConfig):
    method = "head_only"
    head_modules: Union[list[str], None] = None
    """Modules (full name, or a suffix after a dot) that form the head. None: classifier / score / qa_outputs of a
    task model, else the output embeddings (lm_head)."""

    def validate(self) -> None:
        check(
            self.head_modules is None or (isinstance(self.head_modules, list) and self.head_modules
                                          and all(isinstance(m, str) for m in self.head_modules)),
            "head_modules",
            "head_modules must be a non-empty list of module names, or null",
        )


@METHODS.register("head_only")
class HeadOnly(SubsetMethod):
    name = "head_only"
    config_class = HeadOnlyConfig
    paper = "https://arxiv.org/abs/2202.10054"
    formula = "the head's parameters: num_labels * (hidden + 1) for a linear classifier"

    def select_parameters(self, model, cfg: HeadOnlyConfig, params) -> list[str]:
        if cfg.head_modules is None:
            chosen = head_parameter_names(model, params)
            if not chosen:
                raise ConfigError(
                    f"{type(model).__name__} has no task head or output embeddings to train; load the model with a "
                    "head (kind: sequence-classification) or name it in head_modules",
                    key="head_modules",
                )
            return chosen
        chosen = []
        for entry in cfg.head_modules:
            found = [n for n in params if _in_module(n, entry)]
            if not found:
                raise ConfigError(f"no module {entry!r}; parameters: {name_shapes(params)}", key="head_modules")
            chosen += [n for n in found if n not in chosen]
        return [n for n in params if n in chosen]


def _in_module(param_name: str, module: str) -> bool:
    """Whether the parameter sits in a module named `module` or ending with "." + module (or inside one)."""
    return f".{module}." in f".{param_name.rsplit('.', 1)[0]}."


@dataclasses.dataclass
class LastKConfig(MethodConfig):
    method = "last_k"
    k: int = 1
    """How many of the last transformer blocks train."""
    train_head: bool = True
    """Also train the head. For a language model with tied embeddings (SmolLM2) that means the input embeddings
    too; set false to train only the blocks and the final norm."""

    def validate(self) -> None:
        check(isinstance(self.k, int) and not isinstance(self.k, bool) and self.k > 0, "k",
              f"k must be a positive integer, got {self.k!r}")
        check(isinstance(self.train_head, bool), "train_head", "train_head must be true or false")


@METHODS.register("last_k")
class LastK(SubsetMethod):
    name = "last_k"
    config_class = LastKConfig
    paper = "https://arxiv.org/abs/1911.03090"
    formula = "k * (parameters of one block) + final norm/pooler (+ head with train_head)"

    def select_parameters(self, model, cfg: LastKConfig, params) -> list[str]:
        names = list(params)
        index = {n: layer_index(n) for n in names}
        blocks = sorted({i for i in index.values() if i is not None})
        if not blocks:
            raise ConfigError(f"no transformer blocks found in {type(model).__name__}", key="k")
        if cfg.k > len(blocks):
            raise ConfigError(f"k={cfg.k}, but this model has {len(blocks)} transformer blocks", key="k")
        first = blocks[-cfg.k]
        last_block_pos = max(pos for pos, n in enumerate(names) if index[n] is not None)
        head = set(head_parameter_names(model, params))
        chosen = {n for n in names if index[n] is not None and index[n] >= first}
        chosen |= {n for pos, n in enumerate(names) if pos > last_block_pos and n not in head}
        if cfg.train_head:
            chosen |= head
        return [n for n in names if n in chosen]

"""Which modules a method adapts: names, a regex, `all-linear`, layer indices and an exclude list.

Matching follows peft so configs move between the tools: a list entry matches a module whose full name
equals it or ends with "." + it; a string is a regular expression matched against the full name;
"all-linear" takes every linear layer except the output head.
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from ..errors import TargetNotFound
from .base import AdapterLayer
from .modules_to_save import ModulesToSave

# peft's defaults per architecture, used when a config names no targets.
DEFAULT_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "t5": ["q", "v"],
    "vit": ["q_proj", "v_proj"],  # attention as in LoRA's paper (peft has no ViT default; transformers 5 names)
    "deit": ["q_proj", "v_proj"],
}
LAYER_PATTERN = re.compile(r".*\.(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
# A CNN's (ResNet, ConvNeXt) blocks sit inside stages: the stage is the unit that layer indices count, so that
# "the last k" means the last k stages (resnet.encoder.stages.2.layers.0.layer.1 is in stage 2).
STAGE_PATTERN = re.compile(r"(?:.*\.)?stages\.(\d+)(?:\.|$)")


def linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def base_of(module: nn.Module) -> nn.Module:
    while isinstance(module, AdapterLayer):
        module = module.base_layer
    return module


def candidate_modules(model: nn.Module, supported: tuple[type, ...]) -> dict[str, nn.Module]:
    """Full name -> module for every module of a supported kind (adapter wrappers count as their base)."""
    out: dict[str, nn.Module] = {}
    wrappers: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrappers):
            continue  # the inside of an adapter layer (its base layer, its lora_A ...) is never a target
        if isinstance(module, AdapterLayer):
            wrappers.append(name)
        if isinstance(base_of(module), supported):
            out[name] = module
    return out


def output_head_names(model: nn.Module) -> set[str]:
    """The LM head / classifier head, which all-linear leaves alone (as peft does)."""
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if head is not None and base_of(module) is base_of(head):
            names.add(name)
        if name.split(".")[-1] in ("lm_head", "classifier", "score", "cls", "pooler") or name.startswith("classifier."):
            names.add(name)
    return names


def layer_index(name: str, layers_pattern: str | None = None) -> int | None:
    if layers_pattern:
        m = re.match(rf".*\.{re.escape(layers_pattern)}\.(\d+)(?:\.|$)", name)
    else:
        m = STAGE_PATTERN.match(name) or LAYER_PATTERN.match(name)
    return int(m.group(1)) if m else None


def _matches(name: str, spec) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def _leaf_names(names: Iterable[str]) -> list[str]:
    return sorted({n.split(".")[-1] for n in names})


def select_modules(
    model: nn.Module,
    target_modules,
    supported: tuple[type, ...],
    exclude_modules=None,
    layers_to_transform=None,
    layers_pattern: str | None = None,
    method: str = "method",
) -> list[str]:
    """Return the full names of the modules to adapt, in model order; TargetNotFound names what exists."""
    candidates = candidate_modules(model, supported)
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise TargetNotFound(
                f"{method}: no target_modules given and no default for model type {model_type!r}; "
                f"modules that can be targeted: {', '.join(_leaf_names(candidates))}"
            )
        target_modules = DEFAULT_TARGETS[model_type]
    if target_modules in ("all-linear", ["all-linear"]):
        heads = output_head_names(model)
        lin = linear_types()
        chosen = [n for n, m in candidates.items() if isinstance(base_of(m), lin) and n not in heads]
    else:
        if isinstance(target_modules, list):
            missing = [t for t in target_modules if not any(_matches(n, [t]) for n in candidates)]
            if missing:
                raise TargetNotFound(
                    f"{method}: target module(s) {missing} not found among the {method}-capable modules; "
                    f"modules that exist: {', '.join(_leaf_names(candidates))}"
                )
        chosen = [n for n in candidates if _matches(n, target_modules)]
    if exclude_modules:
        chosen = [n for n in chosen if not _matches(n, exclude_modules)]
    if layers_to_transform is not None:
        wanted = {layers_to_transform} if isinstance(layers_to_transform, int) else set(layers_to_transform)
        chosen = [n for n in chosen if layer_index(n, layers_pattern) in wanted]
    if not chosen:
        raise TargetNotFound(
            f"{method}: the targeting (target_modules={target_modules!r}, exclude_modules={exclude_modules!r}, "
            f"layers_to_transform={layers_to_transform!r}) selects no module; modules that exist: "
            f"{', '.join(_leaf_names(candidates))}"
        )
    return chosen


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = get_submodule_parent(model, name)
    setattr(parent, child, new)
    _STRUCTURE[0] += 1


_STRUCTURE = [0]  # counts replace_module calls: a cached adapter_modules list older than the count is rebuilt
_CACHE = "_tuneforge_adapter_modules"


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every adapter layer and modules_to_save wrapper, in named_modules order.

    Cached on the model: switching the active adapter must not walk the whole module tree (6,000 modules on
    SmolLM2 with 8 LoRA adapters: 30 ms a switch). The list is rebuilt after any replace_module (how adapters are
    injected and removed) and when a cached module no longer sits where it was found (replaced by other code)."""
    cached = model.__dict__.get(_CACHE)
    if cached is not None and cached[0] == _STRUCTURE[0] and all(p._modules.get(c) is m for p, c, m in cached[2]):
        return cached[1]
    entries, places = [], []
    for name, module in model.named_modules():
        if isinstance(module, (AdapterLayer, ModulesToSave)):
            entries.append((name, module))
            if name:
                parent, child = get_submodule_parent(model, name)
                places.append((parent, child, module))
    object.__setattr__(model, _CACHE, (_STRUCTURE[0], entries, places))
    return entries


def wrap_modules_to_save(model: nn.Module, names: list[str], adapter_name: str) -> None:
    found = False
    for full, module in list(model.named_modules()):
        if any(full == n or full.endswith("." + n) for n in names) and not isinstance(module, ModulesToSave):
            if ".modules_to_save." in full or ".original_module" in full:
                continue
            parent_wrapped = model.get_submodule(full)
            if isinstance(parent_wrapped, ModulesToSave):
                continue
            wrapper = ModulesToSave(module)
            replace_module(model, full, wrapper)
            found = True
    for full, module in model.named_modules():
        if isinstance(module, ModulesToSave) and any(full == n or full.endswith("." + n) for n in names):
            module.add(adapter_name)
            found = True
    if not found:
        raise TargetNotFound(f"modules_to_save {names} matched no module")


def saved_modules(model: nn.Module, adapter_name: str):
    """(module path, wrapper) for every modules_to_save copy held for this adapter."""
    return [(n, m) for n, m in adapter_modules(model) if isinstance(m, ModulesToSave) and m.has_adapter(adapter_name)]

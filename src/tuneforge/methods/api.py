"""The adapter API the rest of tuneforge uses: add, switch, disable, mix per row, merge, unload, state.

Adapters are injected into a plain transformers model (no wrapper class), and the model remembers them in
`model._tuneforge_adapters` (name -> config). Nothing here branches on a method's name: each call is passed to
the registered method object.
"""
from __future__ import annotations

import dataclasses
import difflib
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import METHODS
from .base import MethodConfig
from .modules_to_save import ModulesToSave
from .targeting import adapter_modules, replace_module, saved_modules, wrap_modules_to_save
from .weight_decay import no_decay_names, split_by_decay
from .weight_method import PEFT_PREFIX

_ATTR = "_tuneforge_adapters"
_ACTIVE = "_tuneforge_active"


def method_for(cfg_or_name) -> object:
    name = cfg_or_name if isinstance(cfg_or_name, str) else type(cfg_or_name).method
    return METHODS.get(name)()


def init_reads_base(cfg: MethodConfig) -> bool:
    """Whether adding this adapter reads the base's values (Method.init_reads_base, or modules_to_save, whose
    trained copies start from the base's modules): such a base must hold its values when the adapter is added."""
    return bool(method_for(cfg).init_reads_base or cfg.saved_modules())


def make_method_config(name: str, fields: dict | None = None) -> MethodConfig:
    """Validated config for a method by name; unknown or ill-typed fields raise ConfigError naming the key."""
    cls = METHODS.get(name).config_class
    fields = dict(fields or {})
    known = {f.name for f in dataclasses.fields(cls)}
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown field for method '{name}'{hint}; known: {', '.join(sorted(known))}", key=key)
    cfg = cls(**fields)
    cfg.validate()
    return cfg


def list_adapters(model: nn.Module) -> dict[str, MethodConfig]:
    return dict(getattr(model, _ATTR, {}))


def active_adapters(model: nn.Module) -> list[str]:
    return list(getattr(model, _ACTIVE, []))


def add_adapter(model: nn.Module, method, adapter_name: str = "default", **fields) -> MethodConfig:
    """Inject a new named adapter and make it the active one."""
    cfg = method if isinstance(method, MethodConfig) else make_method_config(method, fields)
    if isinstance(method, MethodConfig) and fields:
        cfg = cfg.replace(**fields)
    cfg.validate()
    adapters = getattr(model, _ATTR, None)
    if adapters is None:
        adapters = {}
        object.__setattr__(model, _ATTR, adapters)  # plain attribute, not a submodule or buffer
    if adapter_name in adapters:
        raise ConfigError(f"an adapter named {adapter_name!r} already exists", key="adapter_name")
    method_for(cfg).apply(model, cfg, adapter_name)
    if cfg.saved_modules():
        wrap_modules_to_save(model, cfg.saved_modules(), adapter_name)
    adapters[adapter_name] = cfg
    set_active_adapters(model, [adapter_name])
    mark_trainable(model, adapter_name)
    return cfg


def _require(model, name: str) -> MethodConfig:
    adapters = list_adapters(model)
    if name not in adapters:
        raise ConfigError(f"no adapter named {name!r}; adapters: {sorted(adapters) or 'none'}", key="adapter")
    return adapters[name]


def set_active_adapters(model: nn.Module, names) -> None:
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
        _require(model, n)
    object.__setattr__(model, _ACTIVE, names)
    for method in {type(c).method for c in list_adapters(model).values()}:
        METHODS.get(method)().set_active(model, names)
    for _, wrapper in _wrappers(model):
        wrapper.active_adapters = [n for n in names if wrapper.has_adapter(n)]


def _wrappers(model):
    return [(n, m) for n, m in adapter_modules(model) if isinstance(m, ModulesToSave)]


def delete_adapter(model: nn.Module, name: str) -> None:
    cfg = _require(model, name)
    method_for(cfg).remove(model, name)
    for mname, wrapper in _wrappers(model):
        if wrapper.has_adapter(name):
            del wrapper.modules_to_save[name]
            if not len(wrapper.modules_to_save):
                replace_module(model, mname, wrapper.original_module)
    del getattr(model, _ATTR)[name]
    set_active_adapters(model, [a for a in active_adapters(model) if a != name])


@contextmanager
def disable_adapters(model: nn.Module):
    """Inside the block the model behaves as the base model (e.g. the DPO reference policy)."""
    adapters = list_adapters(model)
    for name, cfg in adapters.items():
        method_for(cfg).set_enabled(model, name, False)
    wrappers = _wrappers(model)
    for _, w in wrappers:
        w.disabled = True
    try:
        yield model
    finally:
        for name, cfg in adapters.items():
            method_for(cfg).set_enabled(model, name, True)
        for _, w in wrappers:
            w.disabled = False


@contextmanager
def mixed_batch(model: nn.Module, row_adapters: list):
    """Row i of the batch runs through adapter row_adapters[i] (None = the base model)."""
    for name in row_adapters:
        if name is not None and name != "__base__":
            _require(model, name)
    rows = list(row_adapters)
    methods = {type(c).method for c in list_adapters(model).values()}
    try:  # a method may refuse the rows (one weight per layer): then every other method is reset too
        for m in methods:
            METHODS.get(m)().set_row_adapters(model, rows)
        for _, w in _wrappers(model):
            w.row_adapters = rows
        yield model
    finally:
        for m in methods:
            METHODS.get(m)().set_row_adapters(model, None)
        for _, w in _wrappers(model):
            w.row_adapters = None


def trainable_parameters(model: nn.Module, adapter_name: str | None = None) -> list[tuple[str, nn.Parameter]]:
    """(name in model.named_parameters(), parameter) for everything the adapters train."""
    names = [adapter_name] if adapter_name else list(list_adapters(model))
    real_names: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        real_names.setdefault(id(p), n)  # a tied tensor keeps its first name, as named_parameters() gives it
    out, seen = [], set()
    for name in names:
        cfg = _require(model, name)
        params = method_for(cfg).trainable_parameters(model, name, cfg)
        for mname, w in saved_modules(model, name):
            params += [(f"{mname}.modules_to_save.{name}.{k}", p) for k, p in w.modules_to_save[name].named_parameters()]
        for n, p in params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append((real_names.get(id(p), n), p))
    return out


def mark_trainable(model: nn.Module, adapter_name: str | None = None) -> None:
    """Freeze everything, then let exactly the adapters' own parameters train."""
    model.requires_grad_(False)
    for _, p in trainable_parameters(model, adapter_name):
        p.requires_grad_(True)


def count_parameters(model: nn.Module, adapter_name: str | None = None) -> tuple[int, int]:
    """(trainable by the adapters, total including the frozen base and the adapters)."""
    trainable = sum(p.numel() for _, p in trainable_parameters(model, adapter_name)) if list_adapters(model) else 0
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return trainable, total


def optimizer_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups over the trainable parameters: methods may split theirs (LoRA+); then every group is split by
    the one weight-decay rule (methods/weight_decay.py: no decay for biases and norm weights)."""
    groups, claimed = [], set()
    for name, cfg in list_adapters(model).items():
        params = [(n, p) for n, p in trainable_parameters(model, name) if p.requires_grad]
        custom = method_for(cfg).optimizer_groups(model, cfg, name, params, lr, weight_decay)
        if custom:
            groups.extend(custom)
            claimed.update(id(p) for g in custom for p in g["params"])
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    if rest:
        groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay})
    names, no_decay = {id(p): n for n, p in model.named_parameters()}, no_decay_names(model)
    return [part for group in groups for part in split_by_decay(group, names, no_decay)]


@contextmanager
def batch_context(model: nn.Module, batch: dict):
    with ExitStack() as stack:
        for name in active_adapters(model):
            cfg = list_adapters(model)[name]
            stack.enter_context(method_for(cfg).batch_context(model, cfg, name, batch))
        yield


def on_optimizer_step(model: nn.Module) -> None:
    for name, cfg in list_adapters(model).items():
        method_for(cfg).on_optimizer_step(model, cfg, name)


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's keys (adapter name stripped), ready for adapter_model.safetensors."""
    cfg = _require(model, adapter_name)
    state = dict(method_for(cfg).state_dict(model, adapter_name, cfg))
    for mname, w in saved_modules(model, adapter_name):
        for k, v in w.modules_to_save[adapter_name].state_dict().items():
            state[PEFT_PREFIX + f"{mname}.{k}"] = v.detach()
    return state


def pop_saved_module_states(cfg: MethodConfig, state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Take the modules_to_save copies (e.g. a reward model's `score` head) out of an adapter file's tensors
    (peft keys), as {module name: its state_dict}; what stays in `state` is the method's own tensors."""
    out = {}
    for module in cfg.saved_modules():
        prefix = f"{PEFT_PREFIX}{module}."
        own = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
        if own:
            out[module] = own
    return out


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    cfg = _require(model, adapter_name)
    state = dict(state)
    for mname, w in saved_modules(model, adapter_name):
        target = w.modules_to_save[adapter_name]
        own = {}
        for k in target.state_dict():
            key = PEFT_PREFIX + f"{mname}.{k}"
            if key in state:
                own[k] = state.pop(key)
        if own:
            target.load_state_dict(own, strict=False)
    method_for(cfg).load_state_dict(model, state, adapter_name, cfg)


def merge_adapters(model: nn.Module, names=None) -> None:
    names = active_adapters(model) if names is None else ([names] if isinstance(names, str) else names)
    for name in names:
        cfg = _require(model, name)
        method_for(cfg).merge(model, name)


def unmerge_adapters(model: nn.Module, names=None) -> None:
    names = list(list_adapters(model)) if names is None else ([names] if isinstance(names, str) else names)
    for name in names:
        cfg = _require(model, name)
        if METHODS.get(type(cfg).method).mergeable:
            method_for(cfg).unmerge(model, name)


def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Return the plain transformers model: active adapters merged in (merge=True) or dropped."""
    if merge:
        merge_adapters(model)
    for mname, w in _wrappers(model):
        active = [a for a in w.active_adapters if a in w.modules_to_save]
        keep = w.modules_to_save[active[-1]] if (merge and active) else w.original_module
        replace_module(model, mname, keep)
    for name, cfg in list(list_adapters(model).items()):
        method_for(cfg).remove(model, name, keep_merged=merge and name in active_adapters(model))
    object.__setattr__(model, _ATTR, {})
    object.__setattr__(model, _ACTIVE, [])
    return model


def select_targets(model: nn.Module, cfg: MethodConfig) -> list[str]:
    return method_for(cfg).select_targets(model, cfg)

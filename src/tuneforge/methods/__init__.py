"""Adaptation methods behind one contract. Importing this package registers every method file in it, so a
new method is one new file (plus one row in tests/methods/cases.py)."""
import importlib
import pkgutil

from .api import (  # noqa: F401
    active_adapters,
    adapter_state_dict,
    add_adapter,
    batch_context,
    count_parameters,
    delete_adapter,
    disable_adapters,
    list_adapters,
    load_adapter_state_dict,
    make_method_config,
    mark_trainable,
    merge_adapters,
    method_for,
    mixed_batch,
    on_optimizer_step,
    optimizer_groups,
    select_targets,
    set_active_adapters,
    trainable_parameters,
    unload,
    unmerge_adapters,
)
from .base import AdapterLayer, Method, MethodConfig  # noqa: F401
from .catalog import describe_methods, methods_table  # noqa: F401
from .combine import combine  # noqa: F401

_INFRA = {"api", "base", "catalog", "combine", "target_spec", "targeting", "weight_method", "modules_to_save"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRA and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

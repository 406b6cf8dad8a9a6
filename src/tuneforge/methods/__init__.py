"""Adaptation methods behind one contract. Importing this package registers every method file."""
from . import lora  # noqa: F401  (registers)
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

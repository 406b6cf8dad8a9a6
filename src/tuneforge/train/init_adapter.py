"""`train.init_adapter`: start a run's adapter from saved weights instead of a fresh initialisation.

Why: iterated on-policy preference rounds (round k+1 trains on pairs sampled from round k's model, starting
from round k's adapter while the reference stays the base model, as in online AI feedback, Guo et al. 2024),
or an adapter trained further on new data. The saved adapter must be the one this config builds (same method
and settings), so its weights mean the same thing here; any difference is named, never loaded loosely."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import AdapterMismatch, ConfigError, ModelNotFound


def start_from_adapter(model, method_cfg, adapter_dir, allow_pickle: bool = False) -> int:
    """Copy the weights saved in adapter_dir into the model's (already added) default adapter; returns how many
    tensors were read. ConfigError (key init_adapter) when the folder is missing or holds another adapter."""
    from ..io.adapter_files import read_saved_adapter
    from ..methods import load_adapter_state_dict

    where = Path(adapter_dir)
    try:
        _, saved, state = read_saved_adapter(where, allow_pickle)
    except (ModelNotFound, AdapterMismatch) as exc:
        raise ConfigError(str(exc), key="train.init_adapter") from None
    differences = _differences(saved, method_cfg)
    if differences:
        raise ConfigError(f"{where} holds another adapter than this config's method ("
                          + "; ".join(differences) + "); set method to the saved adapter's settings",
                          key="train.init_adapter")
    try:
        load_adapter_state_dict(model, state)
    except AdapterMismatch as exc:
        raise ConfigError(f"{where}: {exc}", key="train.init_adapter") from None
    return len(state)


def _differences(saved, wanted) -> list[str]:
    if type(saved) is not type(wanted):
        return [f"method {type(saved).method!r} saved, {type(wanted).method!r} configured"]
    mine, theirs = dataclasses.asdict(wanted), dataclasses.asdict(saved)
    return [f"{key}: {theirs[key]!r} saved, {mine[key]!r} configured"
            for key in mine if key in theirs and _plain(theirs[key]) != _plain(mine[key])]


def _plain(value):
    """Lists and tuples, ints and floats compare by value (a JSON round trip turns 32 into 32.0)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)

"""Data for fine-tuning: read records, render them with the model's chat template, mask what is not trained,
pack, and collate. See docs/internals.md for the contracts the training loop relies on."""
from .collate import collate_causal
from .config import DataConfig
from .formatting import (
    IGNORE,
    build_sft_examples,
    detect_format,
    load_examples,
    select_records,
    to_messages,
    tokenize_messages,
)
from .packing import pack_examples, packing_efficiency
from .preview import preview
from .readers import Record, read_records, require_fields

__all__ = [
    "IGNORE",
    "DataConfig",
    "Record",
    "build_sft_examples",
    "collate_causal",
    "detect_format",
    "load_examples",
    "pack_examples",
    "packing_efficiency",
    "preview",
    "read_records",
    "require_fields",
    "select_records",
    "to_messages",
    "tokenize_messages",
]

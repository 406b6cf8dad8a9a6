"""Data for fine-tuning: read records, render them with the model's chat template, mask what is not trained,
pack, and collate. See docs/internals.md for the contracts the training loop relies on."""
from .collate import collate_causal
from .config import DataConfig, DataSource
from .formatting import (
    IGNORE,
    build_sft_examples,
    detect_format,
    fill_template,
    load_examples,
    select_records,
    to_messages,
    tokenize_messages,
)
from .mixing import load_mixture, mixing_rates
from .packing import pack_examples, packing_efficiency
from .preview import preview
from .readers import Record, read_records, require_fields

__all__ = [
    "IGNORE",
    "DataConfig",
    "DataSource",
    "Record",
    "build_sft_examples",
    "collate_causal",
    "detect_format",
    "fill_template",
    "load_examples",
    "load_mixture",
    "mixing_rates",
    "pack_examples",
    "packing_efficiency",
    "preview",
    "read_records",
    "require_fields",
    "select_records",
    "to_messages",
    "tokenize_messages",
]

"""Data for fine-tuning: read records, render them with the model's chat template, mask what is not trained,
pack, and collate. See docs/internals.md for the contracts the training loop relies on."""
from .collate import collate_causal
from ..config.data import DataConfig, DataSource
from .formatting import (
    IGNORE,
    build_sft_examples,
    detect_format,
    fill_template,
    encode_record,
    select_records,
    to_conversation,
    to_messages,
    tokenize_messages,
)
from .pair_formats import pair_fields
from .loading import load_examples, load_mixture
from .mixing import mixing_rates
from .packing import pack_examples, packing_efficiency
from .padding import pad
from .preview import preview
from .readers import Record, read_records, require_fields
from .sources import read_source

__all__ = [
    "IGNORE",
    "DataConfig",
    "DataSource",
    "Record",
    "build_sft_examples",
    "collate_causal",
    "detect_format",
    "encode_record",
    "fill_template",
    "load_examples",
    "load_mixture",
    "mixing_rates",
    "pack_examples",
    "packing_efficiency",
    "pad",
    "pair_fields",
    "preview",
    "read_records",
    "read_source",
    "require_fields",
    "select_records",
    "to_conversation",
    "to_messages",
    "tokenize_messages",
]

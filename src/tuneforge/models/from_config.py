"""The one place a run config's `model` section becomes `load_model` arguments.

Training, evaluation, the demo and the classification report each unpacked ModelConfig by hand, and the eval
paths forgot the quantisation keys: a QLoRA adapter was then scored on a dense base it was never trained on.
"""
from __future__ import annotations

from .loader import HEAD_KINDS, load_model

_LOAD_KEYS = ("kind", "num_labels", "dtype", "device", "quantization", "double_quant", "compute_dtype",
              "device_map", "max_memory", "attn_implementation", "revision", "trust_remote_code", "rope_scaling",
              "allow_pickle")


def load_model_for(model_cfg, **overrides):
    """`load_model` with every loading key of `model_cfg` (a ModelConfig); `overrides` replace single keys
    (`name=` another checkpoint, `kind="encoder"`). num_labels is passed only to sequence and image classifiers."""
    options = {key: getattr(model_cfg, key) for key in _LOAD_KEYS}
    options.update(overrides)
    if options["kind"] not in HEAD_KINDS:
        options["num_labels"] = None
    return load_model(options.pop("name", model_cfg.name), **options)

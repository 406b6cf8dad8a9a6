"""Base models and tokenizers: packaged aliases, local dirs, GGUF files, hub ids, and tiny test models."""
from .loader import MODEL_KINDS, load_model, load_tokenizer, resolve_device, resolve_dtype
from .from_config import load_model_for
from .stop_tokens import generation_pad_id, stop_token_ids
from .packaged import PACKAGED_MODELS, ModelSource, cache_root, converted_gguf, resolve_model
from .tiny import tiny_bert, tiny_llama, tiny_tokenizer

__all__ = [
    "MODEL_KINDS",
    "PACKAGED_MODELS",
    "ModelSource",
    "cache_root",
    "generation_pad_id",
    "converted_gguf",
    "load_model",
    "load_model_for",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "stop_token_ids",
    "tiny_bert",
    "tiny_llama",
    "tiny_tokenizer",
]

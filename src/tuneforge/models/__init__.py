"""Base models and tokenizers: packaged aliases, local dirs, GGUF files, hub ids, and tiny test models."""
from .loader import MODEL_KINDS, load_model, load_tokenizer, resolve_device, resolve_dtype
from .from_config import load_model_for
from .stop_tokens import generation_pad_id, stop_token_ids
from .packaged import PACKAGED_MODELS, ModelSource, cache_root, converted_gguf, resolve_model
from .tiny import tiny_bert, tiny_llama, tiny_resnet, tiny_tokenizer, tiny_vit
from .vision import ImagePreprocessor, init_vision_model, load_image_preprocessor

__all__ = [
    "MODEL_KINDS",
    "ImagePreprocessor",
    "PACKAGED_MODELS",
    "ModelSource",
    "cache_root",
    "generation_pad_id",
    "converted_gguf",
    "init_vision_model",
    "load_image_preprocessor",
    "load_model",
    "load_model_for",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "stop_token_ids",
    "tiny_bert",
    "tiny_llama",
    "tiny_resnet",
    "tiny_tokenizer",
    "tiny_vit",
]

"""Files: adapters in peft's format, merged models, GGUF / Ollama exports, training checkpoints."""
from .adapter_files import atomic_dir, load_adapter, read_adapter_config, save_adapter  # noqa: F401


def __getattr__(name):
    if name == "merge":
        from .merge import merge

        return merge
    if name == "export_model":
        from .export import export_model

        return export_model
    if name == "combine_adapters":
        from .combine import combine_adapters

        return combine_adapters
    raise AttributeError(name)

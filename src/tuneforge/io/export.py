"""`export`: a base model, with an adapter merged in, as a GGUF file (llama.cpp) or a GGUF + Modelfile (Ollama).

The adapter is folded into the weights first (methods.unload(merge=True), as `tuneforge merge` does), because
neither llama.cpp's runtime nor Ollama applies a tuneforge adapter; the GGUF then needs nothing but itself.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import TuneforgeError

FORMATS = ("gguf", "ollama")
GGUF_IN_OLLAMA_DIR = "model.gguf"


def export_model(
    base: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    format: str = "gguf",
    quant: str = "f16",
    force: bool = False,
    progress: bool = True,
    allow_pickle: bool = False,
) -> Path:
    """Export `base` (+ `adapter`, merged) for llama.cpp or Ollama; returns what was written.

    format "gguf": `out` is the .gguf file. format "ollama": `out` is a folder that gets `model.gguf` and a
    `Modelfile` (`ollama create NAME -f OUT/Modelfile`). quant: f32 (lossless), f16 or q8_0. `base` may be None
    when the adapter records its base. Refuses to replace an existing file or non-empty folder unless force.
    allow_pickle: also read pickle weights (pytorch_model.bin, adapter_model.bin); refused by default."""
    from ..models import load_model, load_tokenizer
    from .gguf_export import QUANTS, write_gguf

    if format not in FORMATS:
        raise TuneforgeError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if quant not in QUANTS:
        raise TuneforgeError(f"unknown GGUF quantisation {quant!r}; expected one of {', '.join(QUANTS)}")
    out = Path(out)
    _check_target(out, format, force)
    if adapter is not None:
        from .merge import base_of, load_merged

        base = base_of(base, adapter)
        model = load_merged(base, adapter, allow_pickle=allow_pickle)
    elif base is None:
        raise TuneforgeError("export needs --base (or an --adapter that records its base model)")
    else:
        model = load_model(base, dtype="float32", device="cpu", allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(base)
    name = Path(str(base)).name
    if format == "gguf":
        return write_gguf(model, tokenizer, out, quant=quant, name=name, progress=progress)
    return write_ollama(model, tokenizer, out, quant=quant, name=name, progress=progress)


def write_ollama(model, tokenizer, out_dir: str | os.PathLike, *, quant: str = "f16", name: str | None = None,
                 progress: bool = True) -> Path:
    """`out_dir/model.gguf` + `out_dir/Modelfile` for `ollama create`."""
    from .gguf_export import write_gguf
    from .ollama import modelfile

    out_dir = Path(out_dir)
    text = modelfile(model, tokenizer, GGUF_IN_OLLAMA_DIR)  # fails before the long write if it cannot be made
    out_dir.mkdir(parents=True, exist_ok=True)
    write_gguf(model, tokenizer, out_dir / GGUF_IN_OLLAMA_DIR, quant=quant, name=name, progress=progress)
    tmp = out_dir / f".Modelfile.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_dir / "Modelfile")
    return out_dir


def _check_target(out: Path, format: str, force: bool) -> None:
    if format == "gguf":
        if out.suffix != ".gguf":
            raise TuneforgeError(f"--out {out}: a GGUF export is one file ending in .gguf")
        if out.is_dir():
            raise TuneforgeError(f"--out {out} is a folder; give the .gguf file to write")
        if out.exists() and not force:
            raise TuneforgeError(f"{out} already exists; pass --force to replace it")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TuneforgeError(f"{out} already exists and is not an empty folder; pass --force to replace its files")

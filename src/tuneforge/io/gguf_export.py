"""Write a transformers causal LM and its tokenizer as one GGUF file (llama.cpp, Ollama, transformers' GGUF loader).

Tensor storage follows llama.cpp's convert_hf_to_gguf.py: 1-D tensors (norms, biases) stay F32 whatever the
choice, since they are tiny and their rounding would move every activation; 2-D weights are F32, F16, or Q8_0
(blocks of 32 along a row, one fp16 scale each; a row whose length is not a multiple of 32 falls back to F16).
The file is written beside its target and renamed into place, so an interrupted export leaves no half file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import TuneforgeError

QUANTS = ("f32", "f16", "q8_0")


def _storage(quant: str):
    import gguf

    return {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }[quant]


def encode_tensor(name: str, array, quant: str):
    """(data, raw GGML type) for one tensor stored as `quant`, with llama.cpp's exceptions."""
    import gguf
    import numpy as np

    qtype, _ = _storage(quant)
    if array.ndim <= 1 or name.endswith("_norm.weight"):
        qtype = gguf.GGMLQuantizationType.F32
    try:
        data = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)
    except gguf.quants.QuantError:  # row length not a multiple of the block size
        qtype = gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)
    return data, qtype


def write_gguf(model, tokenizer, out: str | os.PathLike, *, quant: str = "f16", name: str | None = None,
               progress: bool = True) -> Path:
    """Write `model` (a Llama, Mistral or Qwen2 causal LM) and `tokenizer` to the GGUF file `out`."""
    import gguf
    from tqdm.auto import tqdm

    from .gguf_arch import gguf_arch, gguf_tensors, write_hparams
    from .gguf_vocab import write_tokenizer

    if quant not in QUANTS:
        raise TuneforgeError(f"unknown GGUF quantisation {quant!r}; expected one of {', '.join(QUANTS)}")
    out = Path(out)
    arch = gguf_arch(model.config)
    tensors = gguf_tensors(model, arch)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or Path(str(model.config._name_or_path or out.stem)).name)
    write_hparams(writer, model.config)
    writer.add_file_type(_storage(quant)[1])
    write_tokenizer(writer, tokenizer, model.config)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for gguf_name, tensor in tqdm(tensors, desc=f"GGUF {quant}", unit="tensor", disable=not progress):
        data, qtype = encode_tensor(gguf_name, tensor.numpy(), quant)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(tensors)} tensors, {quant})", file=sys.stderr)
    return out

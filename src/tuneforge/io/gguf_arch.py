"""Which transformers architectures become which GGUF architectures, their hyper-parameter keys and tensor names.

The names and transforms follow llama.cpp's convert_hf_to_gguf.py, so llama.cpp, Ollama and transformers' GGUF
loader all read the result: Llama and Mistral become GGUF `llama` (llama.cpp has no separate Mistral graph), with
the rows of Q and K permuted from Hugging Face's rotate-half order to GGML's interleaved RoPE order; Qwen2 becomes
`qwen2`, unpermuted, with its q/k/v biases. Tensor names come from gguf-py's own TensorNameMap. Llama 3's RoPE scaling becomes llama.cpp's `rope_freqs` tensor.
"""
from __future__ import annotations

import math
import sys

import torch

from ..errors import TuneforgeError

# transformers model_type -> gguf MODEL_ARCH member name; Mistral runs on llama.cpp's llama graph.
ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}
_PERMUTED_QK = {"llama", "mistral"}


def gguf_arch(config):
    """The gguf.MODEL_ARCH for a transformers config; TuneforgeError naming the architecture when unsupported."""
    import gguf

    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise TuneforgeError(
            f"GGUF export does not support the {model_type!r} architecture "
            f"({', '.join(getattr(config, 'architectures', None) or [])}); supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    rope_type = _rope_parameters(config).get("rope_type", "default")
    if rope_type == "llama3" and model_type in _PERMUTED_QK:
        print(
            "note: Llama 3 RoPE scaling is written as llama.cpp's rope_freqs tensor, which llama.cpp and Ollama use; "
            "transformers' GGUF loader (and so tuneforge loading the .gguf) ignores it and computes plain RoPE",
            file=sys.stderr,
        )
    elif rope_type != "default":
        raise TuneforgeError(
            f"GGUF export supports the default RoPE (and Llama 3's for llama); this {model_type} model uses "
            f"rope_type {rope_type!r}"
        )
    return getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])


def _rope_parameters(config) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(params)


def _rope_theta(config) -> float:
    theta = _rope_parameters(config).get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def write_hparams(writer, config) -> None:
    """The `{arch}.*` keys llama.cpp's TextModel/LlamaModel/Qwen2Model.set_gguf_parameters write."""
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window and window < config.max_position_embeddings:
        print(
            f"note: llama.cpp runs Mistral without its {window}-token sliding window; logits agree with "
            f"transformers on sequences up to {window} tokens",
            file=sys.stderr,
        )


def permute_qk(weight: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute: per head, rows (pairs split into halves) -> interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_tensors(model, arch):
    """(gguf name, tensor) for every weight of a causal LM, in state-dict order, transformed as llama.cpp does.

    A tied lm_head is skipped (llama.cpp then uses token_embd for the output). A tensor without a GGUF name is
    an error naming it: writing the rest would give a file that loads but computes something else."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    out = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TuneforgeError(
                f"GGUF export: no llama.cpp tensor name for {hf_name!r} of this {config.model_type} model "
                "(a variant the exporter does not know)"
            )
        tensor = tensor.detach().to("cpu", torch.float32)
        if config.model_type in _PERMUTED_QK:
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                tensor = permute_qk(tensor, n_head, n_head)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                tensor = permute_qk(tensor, n_head, n_kv)
        out.append((name, tensor))
    if _rope_parameters(config).get("rope_type") == "llama3":
        out.insert(0, (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(config)))
    return out


def llama3_rope_factors(config) -> torch.Tensor:
    """llama.cpp's LlamaModel.generate_extra_tensors: per rotary frequency, the factor llama.cpp divides it by to
    get Llama 3's scaled frequency (1 for short wavelengths, `factor` for long ones, smooth in between)."""
    rope = _rope_parameters(config)
    dim = head_dim(config)
    freqs = 1.0 / (_rope_theta(config) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)

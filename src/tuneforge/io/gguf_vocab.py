"""A tokenizer as GGUF metadata: tokens, token types, scores or merges, special ids, add-bos/eos, chat template.

Follows llama.cpp's convert_hf_to_gguf.py: a byte-level BPE vocabulary (`gpt2`) the way `_set_vocab_gpt2` /
`get_vocab_base` write it, a sentencepiece-style BPE (byte fallback, Llama 2 / Mistral) the way `_set_vocab_llama_hf`
does through gguf-py's LlamaHfVocab, and the merges, special ids and chat template through gguf-py's SpecialVocab.
llama.cpp names the pre-tokenizer (how text is split before BPE) from a hash of a test encoding; we name it from
the tokenizer's own pre-tokenizer definition instead, and refuse one we cannot name rather than let llama.cpp
split text differently from the model's training.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ..errors import TuneforgeError

# The Split regexes of Llama 3's and Qwen2's tokenizer.json, under the names llama.cpp gives their pre-tokenizers.
_SPLITS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, from tokenizer.json's definition."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # llama.cpp: "\p{N}" then the GPT-2 regex
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name, regex in _SPLITS.items():
            if pattern == regex:
                return name
    raise TuneforgeError(
        f"GGUF export: llama.cpp has no name for this tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}); "
        "known: GPT-2 byte-level, SmolLM (digits + byte-level), Llama 3 and Qwen2 splits"
    )


def write_tokenizer(writer, tokenizer, config) -> None:
    """Add the `tokenizer.*` keys for `tokenizer`, sized to the model's vocabulary (padding ids beyond the
    tokenizer get `[PAD<i>]` tokens of type UNUSED, as llama.cpp writes them)."""
    import gguf

    with tempfile.TemporaryDirectory(prefix="tuneforge-gguf-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "config.json").write_text(json.dumps({
            f"{kind}_token_id": getattr(config, f"{kind}_token_id", None) for kind in ("bos", "eos", "pad")
        }))
        tokenizer_json = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
        model = tokenizer_json.get("model", {})
        if model.get("type") == "BPE" and model.get("byte_fallback"):
            n_tokens = _write_sentencepiece_bpe(writer, Path(tmp), tokenizer_json, config.vocab_size)
        elif model.get("type") == "BPE":
            n_tokens = _write_byte_level_bpe(writer, tokenizer, tokenizer_json, config.vocab_size)
        else:
            raise TuneforgeError(
                f"GGUF export supports BPE tokenizers (byte-level or sentencepiece-style); this one is "
                f"{model.get('type')!r}"
            )
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_tokens)
        if not special.merges and model.get("type") == "BPE" and not model.get("byte_fallback"):
            # gguf-py cannot write an empty array; transformers then rebuilds the (empty) merges from scores.
            special.load_merges = False
            writer.add_token_scores([0.0] * n_tokens)
            print("warning: the tokenizer has no BPE merges; llama.cpp needs some, transformers does not",
                  file=sys.stderr)
        special.add_special_token = _added_special_tokens(tokenizer)
        special.add_to_gguf(writer, quiet=True)
        if special.chat_template is None and getattr(tokenizer, "chat_template", None):
            writer.add_chat_template(tokenizer.chat_template)


def _added_special_tokens(tokenizer) -> dict[str, bool]:
    """Whether encoding adds BOS/EOS, read from what the tokenizer actually does."""
    ids = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    added = len(ids) > len(plain)
    return {
        "bos": bool(added and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id),
        "eos": bool(added and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id),
    }


def _write_byte_level_bpe(writer, tokenizer, tokenizer_json: dict, vocab_size: int) -> int:
    """llama.cpp's get_vocab_base + _set_vocab_gpt2."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise TuneforgeError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} rows")
    reverse = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[index]
        if index in added:
            if not added[index].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    return vocab_size


def _write_sentencepiece_bpe(writer, directory: Path, tokenizer_json: dict, vocab_size: int) -> int:
    """llama.cpp's _set_vocab_llama_hf (gguf-py's LlamaHfVocab), padded to the model's rows, with real scores.

    llama.cpp's sentencepiece tokenizer merges the adjacent pair whose joined text has the highest score, where
    LlamaHfVocab writes -1000 for every token (so merge order would be lost). A token made by the merge of rank r
    gets score -r instead: the highest-scoring pair is then the lowest-ranked merge, which is the pair Hugging
    Face's BPE merges first. Tokens no merge makes rank below every merge product."""
    import gguf

    merges = tokenizer_json["model"].get("merges") or []
    rank: dict[str, int] = {}
    for index, pair in enumerate(merges):
        left, right = pair.split(" ", 1) if isinstance(pair, str) else pair
        rank.setdefault(left + right, index)
    unranked = -float(len(merges) + 1)
    vocab = gguf.LlamaHfVocab(directory)
    tokens, scores, types = [], [], []
    for text, _, kind in vocab.all_tokens():
        tokens.append(text)
        token = text.decode("utf-8") if isinstance(text, bytes) else text
        scores.append(-float(rank[token]) if token in rank else unranked)
        types.append(kind)
    if len(tokens) > vocab_size:
        raise TuneforgeError(f"the tokenizer has {len(tokens)} tokens but the model only {vocab_size} rows")
    for index in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{index}]".encode())
        scores.append(unranked)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(_prepends_space(tokenizer_json))
    return vocab_size


def _prepends_space(tokenizer_json: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (Metaspace prepend, or a Prepend normalizer)."""
    def steps(node, key):
        if not node:
            return []
        return node.get(key, []) if node.get("type") == "Sequence" else [node]

    pre = steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    norm = steps(tokenizer_json.get("normalizer"), "normalizers")
    return any(s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") != "never" for s in pre) or any(
        s.get("type") == "Prepend" for s in norm)

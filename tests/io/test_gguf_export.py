"""GGUF export round trips through transformers' GGUF loader and tuneforge's loader, on tiny Llama/Mistral/Qwen2.

Tolerances come from the storage arithmetic, not from one run:
- f32: the file holds the weights bit for bit and the Q/K permutation is a pure reshuffle, so the reloaded
  weights and logits are equal exactly.
- f16: every 2-D weight becomes fp16(w) (round to nearest, |fp16(w) - w| <= 2^-11 |w|, or 2^-25 below fp16's
  normal range), 1-D tensors stay f32. The reloaded weights equal w.half().float() exactly; the logits move by at
  most the first-order bound sum_w |d logit / d w| * eps_w (second-order terms neglected).
- q8_0: per block of 32 along a row, d = max|w| / 127, q = round(w / d), stored q * fp16(d); so
  |w' - w| <= d/2 + 127 |fp16(d) - d| <= d (1/2 + 127 * 2^-11), with 2^-20 relative slack for the fp32 products.
  The logits obey the same first-order bound with that eps_w.
"""
import json

import pytest
import torch

from tuneforge.errors import TuneforgeError
from tuneforge.io.gguf_export import write_gguf
from tuneforge.models.tiny import CHATML_TEMPLATE, SPECIAL_TOKENS

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, how are you today? I am fine, thank you.",
    "Adapters fine-tune a small number of weights; the base stays frozen.",
] * 4
PROBE = "hello world, the lazy fox is fine today"


def bpe_tokenizer():
    """A byte-level BPE tokenizer with real merges (trained here, offline) and ChatML specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(TEXT, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_causal(arch: str, tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if arch == "llama":  # tied embeddings, as SmolLM2
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, **common))
    elif arch == "mistral":  # 3 embedding rows beyond the tokenizer, as many checkpoints pad theirs
        model = MistralForCausalLM(MistralConfig(vocab_size=len(tok) + 3, head_dim=16, tie_word_embeddings=False,
                                                 **common))
    else:  # untied, with q/k/v biases, which a fresh model zeroes: make them matter
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), tie_word_embeddings=False, **common))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(".bias"):
                    param.normal_(0, 0.5)
    model.config._name_or_path = f"tiny-{arch}"
    return model.eval()


def load_hf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def eps_f16(w):
    return torch.maximum(w.abs() * 2.0**-11, torch.full_like(w, 2.0**-25))


def eps_q8_0(w):
    blocks = w.reshape(*w.shape[:-1], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    return (d * (0.5 + 127 * 2.0**-11) * (1 + 2.0**-20)).expand_as(blocks).reshape(w.shape)


def first_order_bound(model, ids, eps_of, which):
    """max over `which` logits (last position) of sum_w |d logit / d w| * eps_w over the 2-D weights."""
    params = [p.requires_grad_(True) for p in model.parameters() if p.ndim == 2]
    with torch.enable_grad():
        out = model(ids).logits[0, -1]
    bounds = []
    for index in which:
        grads = torch.autograd.grad(out[index], params, retain_graph=True)  # noqa: B023
        bounds.append(sum((g.abs() * eps_of(p.detach())).sum() for g, p in zip(grads, params)).item())
    return torch.tensor(bounds)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_f32_round_trip_is_exact(arch, tok, tmp_path):
    model = tiny_causal(arch, tok)
    path = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", progress=False)
    back, _ = load_hf(path)
    # llama.cpp runs Mistral on its llama graph, so the file reloads as a Llama with the same weights
    assert type(back).__name__ == {"qwen2": "Qwen2ForCausalLM"}.get(arch, "LlamaForCausalLM")
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    ids = torch.tensor([tok.encode(PROBE)])
    assert torch.equal(logits(model, ids), logits(back, ids))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f16_weights_are_fp16_rounded_and_logits_within_bound(arch, tok, tmp_path):
    model = tiny_causal(arch, tok)
    back, _ = load_hf(write_gguf(model, tok, tmp_path / "m.gguf", quant="f16", progress=False))
    theirs = back.state_dict()
    for name, w in model.state_dict().items():
        expected = w.half().float() if w.ndim == 2 else w  # norms and biases stay f32
        assert torch.equal(theirs[name], expected), name
    ids = torch.tensor([tok.encode(PROBE)])
    diff = (logits(model, ids)[0, -1] - logits(back, ids)[0, -1]).abs()
    which = [int(i) for i in diff.topk(3).indices]
    bound = first_order_bound(model, ids, eps_f16, which)
    assert (diff[which] <= bound).all(), (diff[which], bound)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_q8_0_weights_within_block_bound_and_logits_within_bound(arch, tok, tmp_path):
    model = tiny_causal(arch, tok)
    back, _ = load_hf(write_gguf(model, tok, tmp_path / "m.gguf", quant="q8_0", progress=False))
    theirs = back.state_dict()
    for name, w in model.state_dict().items():
        if w.ndim == 1:
            assert torch.equal(theirs[name], w), name
        else:
            err = (theirs[name] - w).abs()
            assert (err <= eps_q8_0(w)).all(), name
            assert err.max() > 0, name  # it was really quantised
    ids = torch.tensor([tok.encode(PROBE)])
    diff = (logits(model, ids)[0, -1] - logits(back, ids)[0, -1]).abs()
    which = [int(i) for i in diff.topk(3).indices]
    bound = first_order_bound(model, ids, eps_q8_0, which)
    assert (diff[which] <= bound).all(), (diff[which], bound)


def test_tokenizer_metadata_round_trips(tok, tmp_path):
    import gguf

    model = tiny_causal("mistral", tok)  # 3 padding rows beyond the tokenizer
    path = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", progress=False)
    _, back = load_hf(path)
    chat = tok.apply_chat_template([{"role": "user", "content": PROBE}], tokenize=False, add_generation_prompt=True)
    assert back.encode(chat) == tok.encode(chat)
    assert back.chat_template == tok.chat_template
    assert (back.bos_token, back.eos_token, back.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.tokens")[-3:] == [f"[PAD{i}]" for i in range(len(tok), len(tok) + 3)]
    types = field("tokenizer.ggml.token_type")
    assert [types[i] for i in tok.all_special_ids] == [gguf.TokenType.CONTROL] * len(tok.all_special_ids)
    assert types[-1] == gguf.TokenType.UNUSED
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert field("tokenizer.ggml.merges") == [" ".join(pair) for pair in merges] and merges
    assert field("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field("general.architecture") == "llama"
    names = [t.name for t in reader.tensors]
    assert "blk.1.attn_q.weight" in names and "output.weight" in names and "token_embd.weight" in names


def test_tuneforge_loads_the_export(tok, tmp_path, monkeypatch):
    from tuneforge.models import load_model, load_tokenizer

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    model = tiny_causal("qwen2", tok)
    path = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", progress=False)
    ours = load_model(path, device="cpu")
    ids = torch.tensor([tok.encode(PROBE)])
    assert torch.equal(logits(ours, ids), logits(model, ids))
    assert load_tokenizer(path).encode(PROBE) == tok.encode(PROBE)


def test_tiny_tokenizer_without_merges_round_trips(tmp_path):
    from tuneforge.models import tiny_llama, tiny_tokenizer

    model, tok = tiny_llama(), tiny_tokenizer()
    back, back_tok = load_hf(write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", progress=False))
    ids = torch.tensor([tok.encode(PROBE)])
    assert back_tok.encode(PROBE) == tok.encode(PROBE)
    assert torch.equal(logits(model, ids), logits(back, ids))


def test_permutation_matches_the_reverse_transformers_applies():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tuneforge.io.gguf_arch import permute_qk

    w = torch.randn(4 * 16, 8)
    k = torch.randn(2 * 16, 8)
    proc = LlamaTensorProcessor({"num_attention_heads": 4, "num_key_value_heads": 2})
    assert torch.equal(torch.from_numpy(proc.process(permute_qk(w, 4, 4).numpy(), "blk.0.attn_q.weight").weights), w)
    assert torch.equal(torch.from_numpy(proc.process(permute_qk(k, 4, 2).numpy(), "blk.0.attn_k.weight").weights), k)
    assert not torch.equal(permute_qk(w, 4, 4), w)


def test_unsupported_architecture_is_named(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(TuneforgeError, match="'gpt2' architecture"):
        write_gguf(model, tok, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_unsupported_rope_scaling_is_refused(tok, tmp_path):
    model = tiny_causal("llama", tok)
    model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(TuneforgeError, match="rope_type 'linear'"):
        write_gguf(model, tok, tmp_path / "m.gguf")


def test_llama3_rope_becomes_rope_freqs_matching_transformers(tok, tmp_path):
    """llama.cpp divides each rotary frequency by rope_freqs[i]; transformers' llama3 RoPE multiplies it by a
    scale. So rope_freqs must equal plain inv_freq / transformers' llama3 inv_freq (fp32 rounding: 2^-23 rel.)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=512, rope_parameters=rope)
    model = LlamaForCausalLM(config).eval()
    reader = gguf.GGUFReader(write_gguf(model, tok, tmp_path / "m.gguf", progress=False))
    freqs = {t.name: t for t in reader.tensors}["rope_freqs.weight"]
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32
    factors = torch.from_numpy(freqs.data.copy())
    dim = 32
    plain = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaled = model.model.rotary_emb.inv_freq
    assert not torch.equal(scaled, plain) and len({*factors.tolist()}) > 2  # all three regimes present
    torch.testing.assert_close(factors, plain / scaled, rtol=4 * 2.0**-23, atol=0)


def spm_tokenizer():
    """A sentencepiece-style BPE tokenizer (byte fallback, "\u2581" for spaces) as Llama 2 / Mistral ship theirs:
    ("el" outranks "he", so merging by score and merging leftmost first disagree on "hello")
    <unk> <s> </s>, 256 byte tokens, then pieces in score order with the merges Hugging Face derives from them."""
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    pieces = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "el", "\u2581h", "he", "ll", "lo", "\u2581he", "llo",
              "\u2581hello", "\u2581w", "or", "\u2581wor", "ld", "\u2581world"]
    for piece in pieces:
        vocab[piece] = len(vocab)
    scores = {piece: -float(i) for i, piece in enumerate(pieces) if len(piece) > 1}
    return LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab, scores))


def llama_cpp_spm_encode(text, tokens, scores):
    """llama.cpp's sentencepiece tokenizer in short: "\u2581"-prefixed text as characters; join the adjacent pair
    whose text is a token with the highest score (leftmost on ties) until none is; unknown characters as bytes."""
    ids = {token: index for index, token in enumerate(tokens)}
    symbols = list("\u2581" + text.replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            joined = symbols[i] + symbols[i + 1]
            if joined in ids and (best is None or scores[ids[joined]] > scores[ids[best[1]]]):
                best = (i, joined)
        if best is None:
            break
        symbols[best[0]:best[0] + 2] = [best[1]]
    out = []
    for symbol in symbols:
        out.extend([ids[symbol]] if symbol in ids else [ids[f"<0x{b:02X}>"] for b in symbol.encode()])
    return out


def test_sentencepiece_bpe_tokenizer_round_trips_and_scores_keep_merge_order(tmp_path):
    import gguf

    from tuneforge.models import tiny_llama

    tok = spm_tokenizer()
    model = tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=None)
    path = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", progress=False)
    back, back_tok = load_hf(path)
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("tokenizer.ggml.model") == "llama" and field("tokenizer.ggml.add_space_prefix") is True
    tokens, scores = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    assert types[3:259] == [gguf.TokenType.BYTE] * 256
    for text in ["hello world", "held a word", "hello, wor\u00efd!"]:
        assert back_tok.encode(text) == tok.encode(text), text
        assert llama_cpp_spm_encode(text, tokens, scores) == tok.encode(text, add_special_tokens=False), text
    # gguf-py's LlamaHfVocab alone writes -1000 for every score: merging would then go leftmost-first instead
    flat = [-1000.0] * len(tokens)
    assert llama_cpp_spm_encode("hello world", tokens, flat) != tok.encode("hello world", add_special_tokens=False)
    ids = torch.tensor([tok.encode("hello world")])
    assert torch.equal(logits(model, ids), logits(back, ids))

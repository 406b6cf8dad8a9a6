"""Tiny random models and an offline tokenizer for unit tests: a few hundred thousand parameters, built from a
transformers config, so every test runs in seconds and nothing is downloaded."""
from __future__ import annotations

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
TINY_VOCAB = 256 + len(SPECIAL_TOKENS)


def tiny_tokenizer():
    """Byte-level tokenizer: 256 byte tokens + ChatML specials. eos = <|im_end|>, pad = <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=TINY_VOCAB - 3,
        eos_token_id=TINY_VOCAB - 2,
        pad_token_id=TINY_VOCAB - 1,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_llama(seed: int = 0, **overrides):
    """A 2-layer Llama (~100k parameters) with the tiny tokenizer's vocabulary, in eval mode, fp32."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_llama_config(**overrides)
    model = LlamaForCausalLM(cfg).eval()
    model.config._name_or_path = "tiny-llama"
    return model


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kw = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=TINY_VOCAB - 1,
    )
    kw.update(overrides)
    return BertConfig(**kw)


def tiny_bert(seed: int = 0, num_labels: int | None = None, **overrides):
    """A 2-layer BERT encoder (or a sequence classifier when num_labels is given)."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = tiny_bert_config(**overrides)
    if num_labels is not None:
        cfg.num_labels = num_labels
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(cfg)
    model.config._name_or_path = "tiny-bert"
    return model.eval()


def tiny_vit(seed: int = 0, num_labels: int = 3, **overrides):
    """A 2-layer ViT image classifier on 16x16 RGB images (patch 4, width 32), in eval mode, fp32."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    kw = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, num_labels=num_labels)
    model = ViTForImageClassification(ViTConfig(**{**kw, **overrides}))
    model.config._name_or_path = "tiny-vit"
    return model.eval()


def tiny_resnet(seed: int = 0, num_labels: int = 3, **overrides):
    """A 2-stage ResNet image classifier (basic blocks, 8 and 16 channels), in eval mode, fp32."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    kw = dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
              num_labels=num_labels)
    model = ResNetForImageClassification(ResNetConfig(**{**kw, **overrides}))
    model.config._name_or_path = "tiny-resnet"
    return model.eval()

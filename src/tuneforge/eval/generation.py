"""Generate replies from a base model, optionally with an adapter: the API behind `tuneforge generate` and
the before/after samples the trainer shows.

Prompts are batched with left padding, so every row's last prompt token sits at the same position and the
new tokens line up; generation stops at the tokenizer's end-of-turn token and only the new text is returned.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from ..models.stop_tokens import generation_pad_id, stop_token_ids

DEFAULT_BASE = "smollm2-135m-instruct"


def generate(
    base: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    prompt: str | list[str] | None = None,
    *,
    prompts: list[str] | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "auto",
    seed: int | None = None,
    allow_pickle: bool = False,
) -> list[str]:
    """Load `base` (+ `adapter`) and return one reply per prompt.

    base defaults to the adapter's recorded base model (adapter_config.json), else smollm2-135m-instruct.
    prompt may be a string or a list; `prompts=` is the same as a list. allow_pickle: also read pickle
    weights (adapter_model.bin, pytorch_model.bin), which can run code; refused by default."""
    from ..models import load_model, load_tokenizer

    texts = _prompt_list(prompt, prompts)
    if base is None:
        base = adapter_base(adapter) or DEFAULT_BASE
    model = load_model(base, dtype=dtype, device=device, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(base)
    if adapter is not None:
        from ..io import load_adapter

        load_adapter(model, adapter, allow_pickle=allow_pickle)
    if seed is not None:
        torch.manual_seed(seed)
    return generate_with(
        model, tokenizer, texts, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
        top_p=top_p, chat=chat, system_prompt=system_prompt, batch_size=batch_size,
    )


@torch.no_grad()
def generate_with(
    model,
    tokenizer,
    prompts: str | list[str] | list[list[dict]],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    chat: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Replies from an already-loaded model (adapters as they are: active, merged or disabled).

    chat=True wraps each prompt as a user turn (after `system_prompt`, if given) with the tokenizer's chat
    template; a prompt may also be a whole conversation `[{role, content}, ...]` (few-shot demonstrations as
    earlier turns) whose reply is generated. chat=False feeds the raw text. Greedy unless do_sample; the model is
    put in eval mode for the call and its previous mode restored."""
    texts = _prompt_list(prompts, None)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; pass chat=False to use raw prompts")
    inputs = [_render(tokenizer, text, chat, system_prompt) for text in texts]
    stop_ids = stop_token_ids(model, tokenizer)
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stop_ids,
                   pad_token_id=generation_pad_id(tokenizer, stop_ids))
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    else:  # silence transformers' "temperature is ignored" warnings for greedy decoding
        options.update(temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    replies: list[str] = []
    with _eval_mode(model), _left_padding(tokenizer):
        for start in range(0, len(inputs), batch_size):
            batch = tokenizer(inputs[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=not chat)
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            output = model.generate(**batch, **options)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return replies


def _prompt_list(prompt, prompts) -> list[str]:
    if prompt is not None and prompts is not None:
        raise ValueError("pass prompt or prompts, not both")
    value = prompts if prompts is not None else prompt
    if value is None:
        raise ValueError("no prompt given")
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return [value]  # one text, or one conversation
    return list(value)


def _render(tokenizer, text: str, chat: bool, system_prompt: str | None) -> str:
    if not chat:
        if not isinstance(text, str):
            raise ValueError("a conversation prompt needs chat=True (the chat template renders it)")
        return text
    if isinstance(text, list):  # a conversation
        messages = list(text)
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def adapter_base(adapter) -> str | None:
    if adapter is None:
        return None
    from ..io import read_adapter_config

    return read_adapter_config(adapter).get("base_model_name_or_path") or None


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side

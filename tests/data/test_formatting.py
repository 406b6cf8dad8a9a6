"""Records -> messages -> tokens: the mask covers exactly the replies (plus their end-of-turn token)."""
import json

import pytest

from tuneforge.data import (DataConfig, build_sft_examples, load_examples, select_records, to_messages,
                            tokenize_messages)
from tuneforge.data.formatting import _tokenize_with_spans, encode_conversation
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.tiny import tiny_tokenizer

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def trained_ids(ex):
    return [t for t in ex["labels"] if t != IGNORE]


def test_alpaca_with_and_without_input():
    rec = {"instruction": "Sum these", "input": "1, 2", "output": "3"}
    assert to_messages(rec, "alpaca") == [{"role": "user", "content": "Sum these\n\n1, 2"},
                                          {"role": "assistant", "content": "3"}]
    assert to_messages({"instruction": "Hi", "input": "", "output": "Hey"})[0]["content"] == "Hi"
    assert to_messages({"instruction": "Hi", "output": "Hey"})[0]["content"] == "Hi"


def test_system_prompt_goes_first_unless_record_has_one():
    rec = {"instruction": "Hi", "output": "Hey"}
    assert to_messages(rec, system_prompt="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    chat = {"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}]}
    assert to_messages(chat, system_prompt="Be brief.")[0]["content"] == "Own."


def test_auto_detects_chat_and_alpaca():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert to_messages({"messages": msgs}) == msgs
    assert to_messages({"messages": json.dumps(msgs)}) == msgs  # a CSV cell
    with pytest.raises(DataError, match="cannot tell the data format"):
        to_messages({"question": "x", "answer": "y"}, source="d.jsonl", line=4)


@pytest.mark.parametrize("messages,key,fragment", [
    ([{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}], "messages[0].role", "role must be"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "messages[0].content", "text"),
    ([{"role": "user", "content": "q"}], "messages", "no assistant"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
      {"role": "assistant", "content": "a"}], "messages[1].role", "only come first"),
    ([], "messages", "non-empty list"),
    (["hi"], "messages[0]", "expected an object"),
])
def test_chat_validation_names_file_line_key(tok, messages, key, fragment):
    records = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
               {"messages": messages}]
    with pytest.raises(DataError) as info:
        build_sft_examples(records, tok, DataConfig(), source="chat.jsonl")
    err = info.value
    assert (err.file, err.line, err.key) == ("chat.jsonl", 2, key)
    assert fragment in str(err) and "chat.jsonl:2" in str(err)


def test_alpaca_field_errors(tok):
    with pytest.raises(DataError) as info:
        build_sft_examples([{"instruction": "a", "output": "b"}, {"instruction": 5, "output": "b"}], tok,
                           DataConfig(format="alpaca"), source="a.jsonl")
    assert (info.value.line, info.value.key) == (2, "instruction")
    with pytest.raises(DataError) as info:
        build_sft_examples([{"instruction": "a", "output": "b"}, {"instruction": "a"}], tok,
                           DataConfig(format="alpaca"), source="a.jsonl")
    assert (info.value.line, info.value.key) == (2, "output")


def test_mask_covers_exactly_assistant_turns(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "first q"},
            {"role": "assistant", "content": "first a"}, {"role": "user", "content": "second q"},
            {"role": "assistant", "content": "second a"}]
    ex = tokenize_messages(tok, msgs, 1000)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    expected_ids, expected_labels = [], []
    pieces = [("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nfirst q<|im_end|>\n<|im_start|>assistant\n", 0),
              ("first a<|im_end|>", 1), ("\n<|im_start|>user\nsecond q<|im_end|>\n<|im_start|>assistant\n", 0),
              ("second a<|im_end|>", 1)]
    for text, trained in pieces:
        ids = enc(text)
        expected_ids += ids
        expected_labels += ids if trained else [IGNORE] * len(ids)
    assert ex["input_ids"] == expected_ids
    assert ex["labels"] == expected_labels
    assert ex["input_ids"][-1] == tok.eos_token_id and ex["labels"][-1] == tok.eos_token_id


def test_train_on_all_labels_every_token_but_the_first(tok):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    ex = tokenize_messages(tok, msgs, train_on="all")
    assert ex["labels"][0] == IGNORE and ex["labels"][1:] == ex["input_ids"][1:]
    assert ex["input_ids"][-1] == tok.eos_token_id


def test_template_without_eos_gets_eos_appended_and_trained(tok):
    plain = tiny_tokenizer()
    plain.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                           "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    ex = tokenize_messages(plain, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ans"}])
    assert ex["input_ids"][-1] == plain.eos_token_id
    assert plain.decode(trained_ids(ex)) == "ans\n<|im_end|>"


def test_template_that_is_not_prefix_stable_is_an_error(tok):
    odd = tiny_tokenizer()
    odd.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(DataError, match="prefix by prefix"):
        tokenize_messages(odd, msgs)
    assert tokenize_messages(odd, msgs, train_on="all")["input_ids"][-1] == odd.eos_token_id


def test_template_errors_become_data_errors_with_file_and_line(tok):
    strict = tiny_tokenizer()
    strict.chat_template = "{% if messages|length > 2 %}{{ raise_exception('too long') }}{% endif %}x"
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError) as info:
        build_sft_examples([chat], strict, DataConfig(), source="c.jsonl")
    assert "too long" in str(info.value) and info.value.line == 1


def test_tokenizer_without_offsets_gives_the_same_labels(tok):
    class Slow:
        is_fast = False

        def __getattr__(self, name):
            return getattr(tok, name)

    msgs = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "wörld"}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    spans = [(full.index("wörld"), full.index("wörld") + len("wörld<|im_end|>"))]
    assert _tokenize_with_spans(Slow(), full, spans) == _tokenize_with_spans(tok, full, spans)
    assert encode_conversation(Slow(), msgs) == encode_conversation(tok, msgs)


def test_truncation_is_counted_and_empty_examples_dropped(tok):
    records = [{"instruction": "short", "output": "ok"},
               {"instruction": "long question", "output": "answer " * 20},
               {"instruction": "x" * 200, "output": "never seen"}]
    stats = {}
    exs = build_sft_examples(records, tok, DataConfig(max_length=64), stats=stats)
    assert stats["truncated"] == 2 and stats["dropped"] == 1 and stats["examples"] == len(exs) == 2
    assert all(len(e["input_ids"]) <= 64 for e in exs) and len(exs[1]["input_ids"]) == 64
    assert stats["lengths"][1] > 64


def test_select_records_is_seeded_and_keeps_order():
    records = list(range(100))
    a, b = select_records(records, 10, seed=1), select_records(records, 10, seed=1)
    assert a == b == sorted(a) and len(a) == 10
    assert select_records(records, 10, seed=2) != a
    assert select_records(records, None) == records


def test_load_examples_reads_limits_and_handles_no_validation(tok, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(20)))
    cfg = DataConfig(train=str(path), limit_train=5)
    assert len(load_examples(cfg, tok)) == 5
    assert load_examples(cfg, tok, "validation") == []
    with pytest.raises(ConfigError):
        load_examples(DataConfig(), tok)


def test_data_config_validate():
    DataConfig().validate()
    for bad, key in [(dict(format="yaml"), "format"), (dict(train_on="prompt"), "train_on"),
                     (dict(max_length=1), "max_length"), (dict(limit_train=0), "limit_train")]:
        with pytest.raises(ConfigError) as info:
            DataConfig(**bad).validate()
        assert info.value.key == key

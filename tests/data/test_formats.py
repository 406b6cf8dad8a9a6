"""The record layouts practitioners bring (sharegpt, openai with tools and weights, prompt_completion, text), and
the two ways of finding the assistant tokens (the template's {% generation %} blocks, prefix rendering)."""
import json
import re

import pytest

from tuneforge.data import DataConfig, build_sft_examples, to_conversation
from tuneforge.data.formatting import encode_conversation, encode_record
from tuneforge.errors import DataError
from tuneforge.models.tiny import tiny_tokenizer

IGNORE = -100

# A ChatML template with tool support in the style of Qwen2.5 (tools listed in the system turn, calls as
# <tool_call> JSON) whose replies sit in {% generation %} blocks.
GEN_TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{ '# Tools\n' }}{%- for tool in tools %}{{ tool | tojson + '\n' }}{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] }}"
    "{%- if message.tool_calls %}{%- for call in message.tool_calls %}"
    "{{ '<tool_call>' + {'name': call.function.name, 'arguments': call.function.arguments} | tojson + '</tool_call>' }}"
    "{%- endfor %}{%- endif %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- elif message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)
TOOL_TEMPLATE = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", GEN_TOOL_TEMPLATE)  # same text, no blocks

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                          "b": {"type": "number"}}}}}]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def tokenizer_with(template):
    t = tiny_tokenizer()
    t.chat_template = template
    return t


def trained_text(tok, ids, labels):
    """The decoded runs of trained tokens."""
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def openai_tool_record(weight_first=None):
    first = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "add", "arguments": json.dumps({"a": 2, "b": 3})}}]}
    if weight_first is not None:
        first["weight"] = weight_first
    return {"messages": [{"role": "system", "content": "You add."}, {"role": "user", "content": "2+3?"}, first,
                         {"role": "tool", "tool_call_id": "c1", "content": "5"},
                         {"role": "assistant", "content": "It is 5."}],
            "tools": TOOLS}


# ---- layouts -> conversations -------------------------------------------------------------------------------

def test_auto_detects_every_layout():
    cases = {
        "chat": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "alpaca": {"instruction": "q", "output": "a"},
        "prompt_completion": {"prompt": "q", "completion": "a"},
        "text": {"text": "some text"},
    }
    from tuneforge.data import detect_format

    for fmt, record in cases.items():
        assert detect_format(record) == fmt
    with pytest.raises(DataError, match="cannot tell the data format") as info:
        detect_format({"body": "x", "title": "y"}, source="d.jsonl", line=3)
    assert "d.jsonl:3" in str(info.value) and "sharegpt" in str(info.value)


def test_sharegpt_system_and_tools_fields():
    rec = {"conversations": [{"from": "human", "value": "2+3?"},
                             {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})},
                             {"from": "observation", "value": "5"},
                             {"from": "gpt", "value": "It is 5."}],
           "system": "You add.", "tools": json.dumps(TOOLS)}
    conv = to_conversation(rec)
    assert conv["tools"] == TOOLS
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv["messages"][2]["tool_calls"] == [{"type": "function",
                                                  "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]
    plain = to_conversation({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"},
                                               {"from": "gpt", "value": "a"}]}, "sharegpt")
    assert plain["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize("turns,key,fragment", [
    ([{"from": "bot", "value": "a"}], "conversations[0].from", "from must be one of"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}], "conversations[0].value", "text"),
    ([{"from": "human", "value": "q"}], "conversations", "no assistant"),
    ("not json", "conversations", "not valid JSON"),
])
def test_sharegpt_errors_name_file_line_field(tok, turns, key, fragment):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    with pytest.raises(DataError) as info:
        build_sft_examples([good, {"conversations": turns}], tok, DataConfig(format="sharegpt"), source="s.jsonl")
    assert (info.value.file, info.value.line, info.value.key) == ("s.jsonl", 2, key)
    assert fragment in str(info.value)


def test_openai_messages_tool_calls_and_weights():
    conv = to_conversation(openai_tool_record(weight_first=0), "openai")
    first = conv["messages"][2]
    assert first == {"role": "assistant", "content": "", "weight": 0,
                     "tool_calls": [{"type": "function", "id": "c1",
                                     "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}
    assert conv["messages"][3] == {"role": "tool", "content": "5", "tool_call_id": "c1"}
    assert conv["tools"] == TOOLS
    parts = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "S"}]},
                          {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert to_conversation(parts)["messages"][0] == {"role": "system", "content": "S"}


@pytest.mark.parametrize("mutate,key,fragment", [
    (lambda r: r["messages"][2].update(weight=2), "messages[2].weight", "0 or 1"),
    (lambda r: r["messages"][1].update(weight=0), "messages[1].weight", "assistant messages only"),
    (lambda r: r["messages"][2]["tool_calls"][0]["function"].update(arguments="{a: 2"),
     "messages[2].tool_calls[0].function.arguments", "not valid JSON"),
    (lambda r: r["messages"][2]["tool_calls"][0].update(function={"arguments": "{}"}),
     "messages[2].tool_calls[0].function", "name"),
    (lambda r: r["messages"][4].update(weight=0) or r["messages"][2].update(weight=0), "messages",
     "only weight-0 replies"),
    (lambda r: r.update(tools={"add": 1}), "tools", "list"),
])
def test_openai_errors_name_the_field(mutate, key, fragment):
    rec = openai_tool_record()
    mutate(rec)
    with pytest.raises(DataError) as info:
        to_conversation(rec, "openai", source="o.jsonl", line=7)
    assert (info.value.line, info.value.key) == (7, key)
    assert fragment in str(info.value)


def test_tools_need_a_template_with_tool_support(tok):
    with pytest.raises(DataError, match="no tool support") as info:
        build_sft_examples([openai_tool_record()], tok, DataConfig(), source="t.jsonl")
    assert "t.jsonl:1" in str(info.value)


# ---- masks ---------------------------------------------------------------------------------------------------

def test_tool_call_trained_weight_zero_not_trained():
    t = tokenizer_with(TOOL_TEMPLATE)
    conv = to_conversation(openai_tool_record())
    ids, labels = encode_conversation(t, conv["messages"], tools=conv["tools"])
    text = t.decode(ids)
    assert '"name": "add"' in text and "# Tools" in text  # rendered by the template's own tool support
    assert trained_text(t, ids, labels) == [
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>', "It is 5.<|im_end|>"]
    conv0 = to_conversation(openai_tool_record(weight_first=0))
    ids0, labels0 = encode_conversation(t, conv0["messages"], tools=conv0["tools"])
    assert ids0 == ids
    assert trained_text(t, ids0, labels0) == ["It is 5.<|im_end|>"]


CONVERSATIONS = [
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], None),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d d"}], None),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], None),
    ("tools", TOOLS),
    ("tools-weight0", TOOLS),
]


@pytest.mark.parametrize("messages,tools", CONVERSATIONS)
def test_generation_blocks_and_prefix_rendering_give_the_same_mask(messages, tools):
    """apply_chat_template(return_assistant_tokens_mask=True) on a {% generation %} template and the prefix
    method agree token for token (after the shared EOS rules)."""
    if messages == "tools":
        messages = to_conversation(openai_tool_record())["messages"]
    elif messages == "tools-weight0":
        messages = to_conversation(openai_tool_record(weight_first=0))["messages"]
    gen = tokenizer_with(GEN_TOOL_TEMPLATE)
    by_blocks = encode_conversation(gen, messages, tools=tools, mask_method="generation")
    by_prefix = encode_conversation(gen, messages, tools=tools, mask_method="prefix")
    assert by_blocks == by_prefix
    assert any(label != IGNORE for label in by_blocks[1])
    plain = tokenizer_with(TOOL_TEMPLATE)  # the same text without blocks: auto falls back to prefix rendering
    assert encode_conversation(plain, messages, tools=tools) == by_prefix
    with pytest.raises(DataError, match="generation"):
        encode_conversation(plain, messages, tools=tools, mask_method="generation")


def test_generation_blocks_are_what_auto_uses():
    """A template whose blocks mark less than the reply (the end token left out) shows auto reads the blocks."""
    template = GEN_TOOL_TEMPLATE.replace("{{ '<|im_end|>' }}{% endgeneration %}", "{% endgeneration %}{{ '<|im_end|>' }}")
    t = tokenizer_with(template)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "more"}]
    ids, labels = encode_conversation(t, msgs)
    assert trained_text(t, ids, labels)[0] == "answer"  # the block, not the prefix method's "answer<|im_end|>"
    assert encode_conversation(t, msgs, mask_method="prefix") != (ids, labels)


# ---- raw text formats ----------------------------------------------------------------------------------------

def test_prompt_completion_text_trains_the_completion_only(tok):
    ex = build_sft_examples([{"prompt": "2+2=", "completion": "4"}], tok, DataConfig())[0]
    assert tok.decode(ex["input_ids"]) == "2+2=4<|im_end|>"  # no chat template around raw text
    assert trained_text(tok, ex["input_ids"], ex["labels"]) == ["4<|im_end|>"]


def test_prompt_completion_conversational(tok):
    rec = {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    ex = build_sft_examples([rec], tok, DataConfig(format="prompt_completion"))[0]
    assert trained_text(tok, ex["input_ids"], ex["labels"]) == ["a<|im_end|>"]
    assert "<|im_start|>user\nq" in tok.decode(ex["input_ids"])
    with pytest.raises(DataError, match="both be text or both be message lists") as info:
        build_sft_examples([{"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}], tok,
                           DataConfig(format="prompt_completion"), source="p.jsonl")
    assert (info.value.line, info.value.key) == (1, "completion")


def test_text_trains_every_token_and_cuts_long_texts(tok):
    cfg = DataConfig(format="text", text_field="body", max_length=16)
    stats = {}
    examples = build_sft_examples([{"body": "abc"}, {"body": "x" * 40}], tok, cfg, stats=stats)
    first = examples[0]
    assert tok.decode(first["input_ids"]) == "abc<|im_end|>"
    assert first["labels"] == [IGNORE] + first["input_ids"][1:]  # every token but the unpredictable first
    long = examples[1:]
    assert [len(e["input_ids"]) for e in long] == [16, 16, 9]  # 40 bytes + EOS, cut, none dropped
    assert sum((e["input_ids"] for e in long), []) == [tok.convert_tokens_to_ids("x")] * 40 + [tok.eos_token_id]
    assert stats["split"] == 1 and stats["truncated"] == 0
    with pytest.raises(DataError, match="text_field") as info:
        build_sft_examples([{"text": "abc"}], tok, cfg, source="c.jsonl")
    assert (info.value.line, info.value.key) == (1, "body")


def test_text_is_packed_by_the_sft_task(tok, tmp_path):
    from tuneforge.config import config_from_dict
    from tuneforge.train.tasks.sft import SFTTask

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"short text number {i}"}) + "\n" for i in range(6)))
    cfg = config_from_dict({"data": {"train": str(path), "max_length": 64}})  # format auto -> text
    train, _ = SFTTask(pad_token_id=tok.pad_token_id).prepare(cfg, tok)
    assert len(train) == 2 and all("seq_lens" in row for row in train)  # 6 texts of ~20 tokens in rows of 64
    assert sum(len(row["seq_lens"]) for row in train) == 6


def test_encode_record_names_the_record_on_template_errors(tok):
    conv = to_conversation(openai_tool_record())
    with pytest.raises(DataError) as info:
        encode_record(tok, conv, source="x.jsonl", line=9)
    assert "x.jsonl:9" in str(info.value)

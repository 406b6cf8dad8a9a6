"""Preference pairs in the plain, conversational and OpenAI DPO layouts give the same token ids; bad records name
file, line and field; the service's DPO jobs accept OpenAI's DPO files."""
import json

import pytest

from tuneforge.data import pair_fields
from tuneforge.data.preferences import build_pairs
from tuneforge.errors import DataError
from tuneforge.models.tiny import tiny_tokenizer

PLAIN = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
CONVERSATIONAL = {"prompt": [{"role": "user", "content": "Name a colour."}],
                  "chosen": [{"role": "assistant", "content": "Blue."}],
                  "rejected": [{"role": "assistant", "content": "Seven."}]}
IMPLICIT = {"chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}]}
OPENAI = {"input": {"messages": [{"role": "user", "content": "Name a colour."}]},
          "preferred_output": [{"role": "assistant", "content": "Blue."}],
          "non_preferred_output": [{"role": "assistant", "content": "Seven."}]}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("record", [CONVERSATIONAL, IMPLICIT, OPENAI])
def test_every_layout_gives_the_plain_pairs(tok, record):
    want, _ = build_pairs([PLAIN], tok, append_eos=True)
    got, stats = build_pairs([record], tok, append_eos=True)
    assert got == want and stats.kept == 1
    assert tok.decode(got[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_multi_turn_prompt_is_rendered_as_turns(tok):
    record = {"input": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                                     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
              "preferred_output": [{"role": "assistant", "content": "yes"}],
              "non_preferred_output": [{"role": "assistant", "content": "no"}]}
    pairs, _ = build_pairs([record], tok)
    prompt = tok.decode(pairs[0]["prompt_ids"])
    assert prompt == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb"
                      "<|im_end|>\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("record,key,fragment", [
    ({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}, "input.messages", "non-empty"),
    ({k: v for k, v in OPENAI.items() if k != "non_preferred_output"}, "non_preferred_output", "missing field"),
    (dict(OPENAI, input="hi"), "input", "messages"),
    (dict(OPENAI, preferred_output=[{"role": "user", "content": "x"}]), "preferred_output", "one assistant message"),
    (dict(IMPLICIT, rejected=[{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}]),
     "rejected", "share every turn"),
    ({"prompt": "q", "chosen": 3, "rejected": "r"}, "chosen", "must be text"),
])
def test_bad_pairs_name_file_line_field(tok, record, key, fragment):
    with pytest.raises(DataError) as info:
        build_pairs([PLAIN, record], tok, source="pairs.jsonl")
    assert (info.value.file, info.value.line, info.value.key) == ("pairs.jsonl", 2, key)
    assert fragment in str(info.value)


def test_raw_template_needs_a_text_prompt(tok):
    with pytest.raises(DataError, match="template 'raw' needs a text prompt") as info:
        build_pairs([OPENAI], tok, template="raw", source="p.jsonl")
    assert info.value.line == 1


def test_pair_fields_tools_come_from_the_input():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    prompt, chosen, rejected, got = pair_fields(dict(OPENAI, input=dict(OPENAI["input"], tools=tools)))
    assert (chosen, rejected, got) == ("Blue.", "Seven.", tools)


def test_service_dpo_job_files_accept_openai_dpo_and_name_bad_lines(tmp_path):
    from tuneforge.serve.validation import FileValidationError, check_records

    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(OPENAI) + "\n" + json.dumps(PLAIN) + "\n")
    check_records(path, "file-1", "dpo")
    path.write_text(json.dumps(OPENAI) + "\n" + json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                                                            "preferred_output": "yes"}) + "\n")
    with pytest.raises(FileValidationError) as info:
        check_records(path, "file-1", "dpo")
    assert info.value.line == 2 and "file-1 line 2" in str(info.value)


def test_service_supervised_files_accept_openai_tools_and_weights(tmp_path):
    from tuneforge.serve.validation import FileValidationError, check_records

    record = {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": None, "weight": 0,
                            "tool_calls": [{"id": "1", "type": "function",
                                            "function": {"name": "f", "arguments": "{}"}}]},
                           {"role": "tool", "tool_call_id": "1", "content": "r"},
                           {"role": "assistant", "content": "done", "weight": 1}],
              "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(record) + "\n")
    check_records(path, "file-2", "sft")
    record["messages"][3]["weight"] = 0.5
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(FileValidationError, match="weight must be 0 or 1"):
        check_records(path, "file-2", "sft")

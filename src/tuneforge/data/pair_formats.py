"""The layouts of preference pairs, each read into (prompt, chosen, rejected, tools):

    plain           {"prompt": str, "chosen": str, "rejected": str}
    conversational  chosen / rejected as message lists (TRL's form): with a `prompt` message list, each side is
                    the reply; without one, each side is the whole conversation and the prompt is their shared
                    turns before the final assistant reply
    openai          {"input": {"messages": [...], "tools": [...]}, "preferred_output": [{role: assistant,
                    content}], "non_preferred_output": [...]} (OpenAI's DPO fine-tuning format)

The prompt comes back as text (plain) or as a message list (the others); a reply is always the text of one
assistant message. Errors name file, line and the field.
"""
from __future__ import annotations

from ..errors import DataError
from .formats import _content, parse_messages, record_tools

OPENAI_FIELDS = ("input", "preferred_output", "non_preferred_output")


def pair_layout(record: dict) -> str:
    if "preferred_output" in record or "non_preferred_output" in record:
        return "openai"
    if isinstance(record.get("chosen"), list) or isinstance(record.get("rejected"), list):
        return "conversational"
    return "plain"


def _missing(record: dict, key: str, source, line) -> DataError:
    have = ", ".join(sorted(map(str, record))) or "none"
    return DataError(f"missing field '{key}' (record has: {have})", file=source, line=line, key=key)


def _text(record: dict, key: str, source, line) -> str:
    if key not in record:
        raise _missing(record, key, source, line)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"'{key}' must be text, got {type(value).__name__}", file=source, line=line, key=key)
    return value


def _reply(messages, key: str, source, line) -> str:
    """The text of a one-message assistant reply."""
    if isinstance(messages, dict):
        messages = [messages]
    parsed = parse_messages(messages, source, line, key)
    if len(parsed) != 1 or parsed[0]["role"] != "assistant" or parsed[0].get("tool_calls"):
        raise DataError("expected one assistant message with text content as the reply", file=source, line=line,
                        key=key)
    return parsed[0]["content"]


def pair_fields(record: dict, source=None, line=None):
    """(prompt, chosen, rejected, tools) of a pair record in any layout of the module docstring."""
    layout = pair_layout(record)
    if layout == "plain":
        return (*(_text(record, key, source, line) for key in ("prompt", "chosen", "rejected")), None)
    if layout == "openai":
        for key in OPENAI_FIELDS:
            if key not in record:
                raise _missing(record, key, source, line)
        inp = record["input"]
        if not isinstance(inp, dict) or "messages" not in inp:
            raise DataError("'input' must be an object with messages (and optional tools)", file=source, line=line,
                            key="input")
        prompt = parse_messages(inp["messages"], source, line, "input.messages")
        chosen = _reply(record["preferred_output"], "preferred_output", source, line)
        rejected = _reply(record["non_preferred_output"], "non_preferred_output", source, line)
        return prompt, chosen, rejected, record_tools(inp, source, line, "tools")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise _missing(record, key, source, line)
    tools = record_tools(record, source, line)
    if "prompt" in record:
        prompt = record["prompt"]
        prompt = ([{"role": "user", "content": _content(prompt, "prompt", source, line)}] if isinstance(prompt, str)
                  else parse_messages(prompt, source, line, "prompt"))
        return (prompt, _reply(record["chosen"], "chosen", source, line),
                _reply(record["rejected"], "rejected", source, line), tools)
    chosen = parse_messages(record["chosen"], source, line, "chosen")
    rejected = parse_messages(record["rejected"], source, line, "rejected")
    if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
        raise DataError("without a 'prompt', chosen and rejected must be conversations that share every turn but "
                        "the final assistant reply", file=source, line=line, key="rejected")
    return (chosen[:-1], _reply(chosen[-1:], "chosen", source, line), _reply(rejected[-1:], "rejected", source, line),
            tools)

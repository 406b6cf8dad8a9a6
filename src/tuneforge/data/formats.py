"""The record layouts practitioners bring, each turned into one of two things tokenization understands:

- a conversation `{"messages": [...], "tools": [...] | None}`, rendered with the chat template
  (alpaca, chat / openai, sharegpt, template, conversational prompt_completion);
- raw text segments `{"segments": [(text, trained), ...]}`, tokenized without a template
  (text, and prompt_completion with plain-string prompt and completion, as TRL and Axolotl do).

Messages follow the Hugging Face chat-template convention (`role`, `content`, assistant `tool_calls` with
`function.arguments` as a dict, `role: tool` replies), so templates with tool support render them as their
authors meant. An assistant message with `"weight": 0` (OpenAI's per-message loss mask) is context only.
Every error names the record's file, line and the offending field (`messages[2].tool_calls[0]...`).
"""
from __future__ import annotations

import json

from ..errors import DataError

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool", "function_call": "assistant"}
RAW_FORMATS = ("text",)


def detect_format(record: dict, source=None, line=None) -> str:
    """The layout of a record from its keys (see DataConfig.format); a DataError listing the known layouts when
    the keys fit none of them."""
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    have = ", ".join(sorted(map(str, record))) or "none"
    raise DataError(
        f"cannot tell the data format from the keys ({have}); expected 'messages' (chat/openai), 'conversations' "
        "(sharegpt), 'instruction' + 'output' (alpaca), 'prompt' + 'completion' (prompt_completion) or "
        "'text' (text), or set data.format",
        file=source, line=line,
    )


def _err(message: str, source, line, key=None) -> DataError:
    return DataError(message, file=source, line=line, key=key)


def _json_field(value, key: str, source, line):
    """A list/dict field that a CSV or parquet cell may hold as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise _err(f"'{key}' is not valid JSON: {e.msg}", source, line, key) from None
    return value


def _content(value, key: str, source, line, allow_none: bool = False) -> str | None:
    """Message content as text: a string, or OpenAI's list of {type: text, text} parts joined."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        kinds = sorted({str(p.get("type")) for p in value} - {"text"})
        raise _err(f"only text content parts are supported, got {', '.join(kinds)}", source, line, key)
    raise _err(f"content must be text, got {type(value).__name__}", source, line, key)


def _tool_calls(calls, key: str, source, line) -> list[dict]:
    """OpenAI tool calls -> the chat-template form: {"type": "function", "function": {name, arguments: dict}}."""
    if not isinstance(calls, list) or not calls:
        raise _err("tool_calls must be a non-empty list of {type: function, function: {name, arguments}}",
                   source, line, key)
    out = []
    for j, call in enumerate(calls):
        ck = f"{key}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _err("expected {type: function, function: {name, arguments}}", source, line, f"{ck}.function")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise _err(f"arguments are not valid JSON: {e.msg}", source, line, f"{ck}.function.arguments") from None
        if not isinstance(args, dict):
            raise _err(f"arguments must be a JSON object, got {type(args).__name__}", source, line,
                       f"{ck}.function.arguments")
        entry = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def record_tools(record: dict, source, line, key: str = "tools") -> list[dict] | None:
    """The record's tool (function) definitions, as JSON schemas the template renders; None when absent."""
    tools = _json_field(record.get(key), key, source, line)
    if tools in (None, [], ""):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _err("tools must be a list of {type: function, function: {name, description, parameters}}",
                   source, line, key)
    return tools


def _weight(m: dict, key: str, source, line) -> int:
    weight = m.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise _err(f"weight must be 0 or 1, got {weight!r}", source, line, f"{key}.weight")
    return weight


def check_messages(out: list[dict], source, line, key: str = "messages") -> list[dict]:
    """Order rules every format shares: a system message only first, at least one trained assistant turn."""
    for i, m in enumerate(out):
        if m["role"] == "system" and i > 0:
            raise _err("a system message may only come first", source, line, f"{key}[{i}].role")
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in out):
        what = "no assistant message" if not any(m["role"] == "assistant" for m in out) else "only weight-0 replies"
        raise _err(f"conversation has {what} to train on", source, line, key)
    return out


def chat_messages(record: dict, source, line, key: str = "messages") -> list[dict]:
    """`{"messages": [{role, content}, ...]}` in OpenAI's chat fine-tuning form: roles system (or developer),
    user, assistant, tool; assistant `tool_calls` (content may then be null) and `weight: 0|1`."""
    return check_messages(parse_messages(record.get(key), source, line, key), source, line, key)


def parse_messages(messages, source, line, key: str = "messages") -> list[dict]:
    """A message list in the chat-template form, each message checked (order rules: check_messages)."""
    messages = _json_field(messages, key, source, line)
    if not isinstance(messages, list) or not messages:
        raise _err(f"'{key}' must be a non-empty list of {{role, content}}", source, line, key)
    out = []
    for i, m in enumerate(messages):
        mk = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise _err(f"expected an object with role and content, got {type(m).__name__}", source, line, mk)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise _err(f"role must be one of {', '.join(ROLES)}, got {m.get('role')!r}", source, line, f"{mk}.role")
        has_calls = role == "assistant" and m.get("tool_calls") is not None
        content = _content(m.get("content"), f"{mk}.content", source, line, allow_none=has_calls)
        msg = {"role": role, "content": content or ""}
        if has_calls:
            msg["tool_calls"] = _tool_calls(m["tool_calls"], f"{mk}.tool_calls", source, line)
        if role == "tool":
            for extra in ("tool_call_id", "name"):
                if isinstance(m.get(extra), str):
                    msg[extra] = m[extra]
        if "weight" in m:
            if role != "assistant":
                raise _err("weight applies to assistant messages only", source, line, f"{mk}.weight")
            if _weight(m, mk, source, line) == 0:
                msg["weight"] = 0
        out.append(msg)
    return out


def sharegpt_messages(record: dict, source, line) -> list[dict]:
    """`{"conversations": [{from: human|gpt|system|tool, value}], "system": ..., "tools": ...}` (LLaMA-Factory's
    and FastChat's layout; `observation` is a tool reply, `function_call` an assistant tool call as JSON)."""
    turns = _json_field(record.get("conversations"), "conversations", source, line)
    if not isinstance(turns, list) or not turns:
        raise _err("'conversations' must be a non-empty list of {from, value}", source, line, "conversations")
    out = []
    system = record.get("system")
    if system not in (None, ""):
        out.append({"role": "system", "content": _content(system, "system", source, line)})
    for i, t in enumerate(turns):
        tk = f"conversations[{i}]"
        if not isinstance(t, dict):
            raise _err(f"expected an object with from and value, got {type(t).__name__}", source, line, tk)
        who = t.get("from")
        if who not in SHAREGPT_ROLES:
            raise _err(f"from must be one of human, gpt, system, tool (or observation, function_call), got {who!r}",
                       source, line, f"{tk}.from")
        value = _content(t.get("value"), f"{tk}.value", source, line)
        if who == "function_call":
            call = _json_field(value, f"{tk}.value", source, line)
            calls = call if isinstance(call, list) else [call]
            calls = [{"type": "function", "function": c} if isinstance(c, dict) and "function" not in c else c
                     for c in calls]
            out.append({"role": "assistant", "content": "",
                        "tool_calls": _tool_calls(calls, f"{tk}.value", source, line)})
            continue
        if who == "system" and i == 0 and out:
            raise _err("both the 'system' field and a first system turn are set", source, line, f"{tk}.from")
        out.append({"role": SHAREGPT_ROLES[who], "content": value})
    return check_messages(out, source, line, "conversations")


def prompt_completion(record: dict, source, line) -> dict:
    """`{prompt, completion}`: plain strings become raw text (loss on the completion); message lists (TRL's
    conversational form) become a conversation whose completion turns are trained."""
    prompt = _json_field(record.get("prompt"), "prompt", source, line) if isinstance(record.get("prompt"), list) \
        else record.get("prompt")
    completion = record.get("completion")
    for key, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise _err(f"missing field '{key}'", source, line, key)
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"segments": [(prompt, False), (completion, True)]}
    if isinstance(prompt, list) and isinstance(completion, list):
        head = [dict(m, weight=0) if m["role"] == "assistant" else m
                for m in parse_messages(prompt, source, line, "prompt")]
        tail = parse_messages(completion, source, line, "completion")
        return {"messages": check_messages(head + tail, source, line, "completion"),
                "tools": record_tools(record, source, line)}
    raise _err("prompt and completion must both be text or both be message lists, got "
               f"{type(prompt).__name__} and {type(completion).__name__}", source, line, "completion")


def text_segments(record: dict, field: str, source, line) -> dict:
    """Raw text for continued pre-training: every token trained."""
    if field not in record:
        have = ", ".join(sorted(map(str, record))) or "none"
        raise _err(f"missing field '{field}' (record has: {have}); set data.text_field", source, line, field)
    value = record[field]
    if not isinstance(value, str):
        raise _err(f"'{field}' must be text, got {type(value).__name__}", source, line, field)
    return {"segments": [(value, True)]}

"""An Ollama Modelfile for an exported GGUF: its chat template in Ollama's Go template syntax, stops, parameters.

Ollama cannot run a Jinja chat template, so the model's template is recognised by rendering it on a probe
conversation: when it renders ChatML exactly (the format of SmolLM2, Qwen2 and most instruction tunes), the
Modelfile carries Ollama's own ChatML template, and a system prompt the Jinja template inserts when a chat has
none becomes the Modelfile's SYSTEM (Ollama inserts it under the same condition). Any other template is left to
Ollama, which matches the GGUF's `tokenizer.chat_template` against the templates it knows.
"""
from __future__ import annotations

import sys

from ..errors import TuneforgeError

CHATML_GO_TEMPLATE = """{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def _chatml(messages) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def chatml_default_system(tokenizer) -> tuple[bool, str | None]:
    """(is the chat template ChatML, the system prompt it inserts into a chat without one)."""
    if not getattr(tokenizer, "chat_template", None):
        return False, None
    try:
        render = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)  # noqa: E731
        if render(_PROBE) != _chatml(_PROBE):
            return False, None
        bare = render(_PROBE[1:2])
    except Exception:  # a template that raises on a plain chat is not one we can translate
        return False, None
    tail = _chatml(_PROBE[1:2])
    if bare == tail:
        return True, None
    head = bare[: len(bare) - len(tail)] if bare.endswith(tail) else ""
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        return True, head[len("<|im_start|>system\n"): -len("<|im_end|>\n")]
    return False, None


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise TuneforgeError(f'the {what} contains """, which an Ollama Modelfile cannot quote')
    return f'"""{text}"""'


def _parameters(model, tokenizer, chatml: bool) -> list[tuple[str, object]]:
    stops = ["<|im_start|>", "<|im_end|>"] if chatml else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    params: list[tuple[str, object]] = [("stop", f'"{s}"') for s in stops]
    params.append(("num_ctx", min(int(model.config.max_position_embeddings), 4096)))
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.do_sample:  # only sampling settings the model's authors chose
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                             ("repeat_penalty", "repetition_penalty")):
            value = getattr(gen, theirs, None)
            if value is not None:
                params.append((ours, value))
    return params


def modelfile(model, tokenizer, gguf_name: str) -> str:
    """The text of a Modelfile whose FROM is `gguf_name` (a path relative to the Modelfile's folder)."""
    chatml, system = chatml_default_system(tokenizer)
    lines = [f"FROM ./{gguf_name}", ""]
    if chatml:
        lines += [f"TEMPLATE {_quoted(CHATML_GO_TEMPLATE, 'chat template')}", ""]
        if system:
            lines += [f"SYSTEM {_quoted(system, 'default system prompt')}", ""]
    elif getattr(tokenizer, "chat_template", None):
        lines += ["# The chat template is not ChatML: Ollama picks a template matching the GGUF's own", ""]
        print("note: the chat template is not ChatML; the Modelfile leaves the template to Ollama's detection "
              "from the GGUF's tokenizer.chat_template", file=sys.stderr)
    else:
        print("note: the model has no chat template; Ollama will pass prompts through as they are", file=sys.stderr)
    lines += [f"PARAMETER {key} {value}" for key, value in _parameters(model, tokenizer, chatml)]
    return "\n".join(lines) + "\n"

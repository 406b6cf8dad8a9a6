"""The Modelfile's ChatML template, run by Go's own text/template (the engine Ollama uses), renders every chat the
way the model's Jinja chat template does, given how Ollama fills the template's values: the request's system
messages joined as .System (or the Modelfile's SYSTEM when the request has none) and the chat as .Messages; or,
for /api/generate, .System and .Prompt. Needs the `go` tool (Debian: golang-go; .ci/run installs it)."""
import json
import shutil
import subprocess

import pytest

from tuneforge.io.ollama import CHATML_GO_TEMPLATE, chatml_default_system
from tuneforge.models import tiny_tokenizer

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs the go tool (apt-get install golang-go)")

RENDER_GO = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

// The fields Ollama's template.Execute hands a template (Tools and thinking left out).
type Values struct {
	System   string
	Messages []Message
	Prompt   string
	Response string
}

func main() {
	var in struct {
		Template string
		Values   []Values
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("modelfile").Parse(in.Template))
	var out []string
	for _, v := range in.Values {
		var b stringsBuilder
		if err := tmpl.Execute(&b, v); err != nil {
			panic(err)
		}
		out = append(out, string(b))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type stringsBuilder []byte

func (b *stringsBuilder) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }
"""

DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!\nHow can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "U2"}],
]


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gotemplate")
    (folder / "main.go").write_text(RENDER_GO)
    env = {"HOME": str(folder), "GOCACHE": str(folder / "cache"), "GO111MODULE": "off", "PATH": "/usr/bin:/bin"}
    env["PATH"] = f"{shutil.which('go').rsplit('/', 1)[0]}:{env['PATH']}"
    subprocess.run(["go", "build", "-o", str(folder / "render"), str(folder / "main.go")], check=True, env=env,
                   cwd=folder, capture_output=True)

    def run(values):
        done = subprocess.run([str(folder / "render")], input=json.dumps({"Template": CHATML_GO_TEMPLATE,
                                                                          "Values": values}),
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout)
    return run


def ollama_values(chat, modelfile_system):
    """What Ollama's chat handler passes: SYSTEM prepended when the request has no system message, then every
    system message joined into .System, and the messages themselves."""
    if modelfile_system and not any(m["role"] == "system" for m in chat):
        chat = [{"role": "system", "content": modelfile_system}, *chat]
    system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in chat]}


@pytest.mark.parametrize("template", ["plain", "smollm2"])
def test_go_template_renders_chats_like_the_jinja_template(render, template):
    tok = tiny_tokenizer()
    if template == "smollm2":
        tok.chat_template = SMOLLM2_TEMPLATE
    chatml, system = chatml_default_system(tok)
    assert chatml and system == (DEFAULT if template == "smollm2" else None)
    got = render([ollama_values(chat, system) for chat in CHATS])
    want = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in CHATS]
    assert got == want


def test_go_template_generate_endpoint_form(render):
    tok = tiny_tokenizer()
    tok.chat_template = SMOLLM2_TEMPLATE
    _, system = chatml_default_system(tok)
    got = render([{"System": system, "Prompt": "Hi"}, {"System": "Be brief.", "Prompt": "Hi"}])
    want = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in CHATS[:2]]
    assert got == want

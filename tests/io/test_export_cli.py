"""`tuneforge export` / `export_model`: adapter merged before writing, Ollama Modelfile, clear errors."""
import pytest
import torch

from tuneforge.cli.main import main
from tuneforge.errors import TuneforgeError
from tuneforge.io.export import export_model
from tuneforge.io.ollama import CHATML_GO_TEMPLATE, chatml_default_system, modelfile
from tuneforge.models import tiny_llama, tiny_tokenizer

PROMPT = "hello there, export me"


@pytest.fixture
def lora_adapter(tmp_path, tiny_base_dir):
    """A peft LoRA adapter for the tiny base with non-zero B, so merging changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    path = tmp_path / "adapter"
    peft_model.save_pretrained(path)
    return path


def run(args):
    """The CLI exits like a script: 0 on success, 2 with `error: ...` on a user mistake."""
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code or 0


def gguf_logits(path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def test_adapter_is_merged_before_export(tiny_base_dir, lora_adapter, tmp_path):
    from tuneforge.io.merge import load_merged

    out = export_model(tiny_base_dir, tmp_path / "m.gguf", adapter=lora_adapter, quant="f32", progress=False)
    ids = torch.tensor([tiny_tokenizer().encode(PROMPT)])
    with torch.no_grad():
        merged = load_merged(tiny_base_dir, lora_adapter)(ids).logits
        base = tiny_llama()(ids).logits
    exported = gguf_logits(out, ids)
    assert torch.equal(exported, merged)
    assert not torch.allclose(exported, base)


def test_cli_export_q8_0_and_refuses_to_overwrite(tiny_base_dir, tmp_path, capsys):
    out = tmp_path / "tiny.gguf"
    assert run(["export", "--base", str(tiny_base_dir), "--out", str(out), "--quant", "q8_0", "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    import gguf

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert run(["export", "--base", str(tiny_base_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_ollama_writes_gguf_and_modelfile(tiny_base_dir, tmp_path):
    out = tmp_path / "ollama"
    assert run(["export", "--base", str(tiny_base_dir), "--out", str(out), "--format", "ollama", "--no-progress"]) == 0
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n")
    assert f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text
    assert 'PARAMETER stop "<|im_start|>"' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER num_ctx 512" in text  # the tiny model's context, under Ollama's 4096 cap
    assert "SYSTEM" not in text  # the tiny template inserts no default system prompt
    import gguf

    reader = gguf.GGUFReader(out / "model.gguf")  # f16 by default, with the chat template inside
    assert {t.name: t.tensor_type for t in reader.tensors}["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert reader.fields["tokenizer.chat_template"].contents() == tiny_tokenizer().chat_template


@pytest.mark.parametrize("args, message", [
    (["--quant", "q4_k"], "unknown GGUF quantisation 'q4_k'"),
    (["--format", "onnx"], "unknown export format 'onnx'"),
])
def test_cli_bad_choices(tiny_base_dir, tmp_path, capsys, args, message):
    assert run(["export", "--base", str(tiny_base_dir), "--out", str(tmp_path / "x.gguf"), *args]) == 2
    assert message in capsys.readouterr().err


def test_gguf_out_must_be_a_gguf_file(tiny_base_dir, tmp_path):
    with pytest.raises(TuneforgeError, match="ending in .gguf"):
        export_model(tiny_base_dir, tmp_path / "model.bin")
    with pytest.raises(TuneforgeError, match="needs --base"):
        export_model(None, tmp_path / "model.gguf")


def test_default_system_prompt_becomes_modelfile_system():
    tok = tiny_tokenizer()
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    # SmolLM2's template: a default system turn when the chat has none
    tok.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\n" + default + "<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    assert chatml_default_system(tok) == (True, default)
    text = modelfile(tiny_llama(), tok, "model.gguf")
    assert f'SYSTEM """{default}"""' in text and "TEMPLATE" in text


def test_non_chatml_template_is_left_to_ollama(capsys):
    tok = tiny_tokenizer()
    tok.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    assert chatml_default_system(tok) == (False, None)
    text = modelfile(tiny_llama(), tok, "model.gguf")
    assert "TEMPLATE" not in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "not ChatML" in capsys.readouterr().err
    tok.chat_template = None
    assert "TEMPLATE" not in modelfile(tiny_llama(), tok, "model.gguf")


def test_pickle_weights_need_allow_pickle(tmp_path):
    from safetensors.torch import load_file

    base = tmp_path / "pickled"
    tiny_llama().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    torch.save(load_file(str(base / "model.safetensors")), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    with pytest.raises(TuneforgeError, match="pytorch_model.bin"):
        export_model(base, tmp_path / "m.gguf", progress=False)
    assert export_model(base, tmp_path / "m.gguf", progress=False, allow_pickle=True).is_file()

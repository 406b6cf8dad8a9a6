import os
import time
from pathlib import Path

import pytest
import torch

from tuneforge.errors import ConfigError, ModelNotFound
from tuneforge.models import (
    PACKAGED_MODELS,
    load_model,
    load_tokenizer,
    packaged,
    resolve_device,
    resolve_dtype,
    resolve_model,
    tiny_bert,
    tiny_llama,
    tiny_tokenizer,
)


def test_tiny_model_and_tokenizer_fit_together(tiny_model, tiny_tok):
    ids = tiny_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"]
    assert ids.max() < tiny_model.config.vocab_size
    assert tiny_tok.decode(tiny_tok("héllo")["input_ids"]) == "héllo"
    assert tiny_model(ids).logits.shape == (1, ids.shape[1], tiny_model.config.vocab_size)
    assert tiny_tok.pad_token_id == tiny_model.config.pad_token_id
    assert tiny_bert(num_labels=3)(ids).logits.shape == (1, 3)


def test_packaged_aliases_resolve_to_their_files():
    smol = resolve_model("smollm2-135m-instruct")
    assert smol.canonical == "smollm2-135m-instruct" and smol.is_gguf
    assert Path(smol.location).name == "SmolLM2-135M-Instruct.Q4_1.gguf" and Path(smol.location).is_file()
    minilm = resolve_model("All-MiniLM-L6-v2")
    assert minilm.canonical == "all-minilm-l6-v2" and (Path(minilm.location) / "config.json").is_file()
    assert set(PACKAGED_MODELS) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}


def test_missing_path_lists_the_aliases(tmp_path):
    with pytest.raises(ModelNotFound) as info:
        load_model(str(tmp_path / "nope"))
    assert "no such file" in str(info.value) and "smollm2-135m-instruct" in str(info.value)
    with pytest.raises(ModelNotFound):
        resolve_model("./missing.gguf")


def test_hub_id_fails_fast_and_clearly_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.time()
    with pytest.raises(ModelNotFound) as info:
        load_model("some-org/not-a-model-xyz")
    assert "hub" in str(info.value) and "all-minilm-l6-v2" in str(info.value)
    with pytest.raises(ModelNotFound):
        load_tokenizer("some-org/not-a-model-xyz")
    assert time.time() - start < 10


def test_local_dir_records_name_dtype_and_device(tiny_base_dir):
    model = load_model(tiny_base_dir, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.config._name_or_path == str(tiny_base_dir) == model.name_or_path
    reference = tiny_llama()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(load_model(tiny_base_dir)(ids).logits, reference(ids).logits)


def test_kinds(tmp_path, tiny_base_dir):
    classifier = load_model(tiny_base_dir, kind="sequence-classification", num_labels=3, device="cpu")
    assert classifier.score.out_features == 3
    bert_dir = tmp_path / "bert"
    tiny_bert().save_pretrained(bert_dir)
    encoder = load_model(bert_dir, kind="encoder")
    assert type(encoder).__name__ == "BertModel"
    with pytest.raises(ConfigError, match="unknown model kind"):
        load_model(tiny_base_dir, kind="seq2seq")
    with pytest.raises(ConfigError, match="num_labels"):
        load_model(tiny_base_dir, num_labels=2)


def test_pad_token_filled_when_missing(tmp_path):
    tok = tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    tiny_llama(pad_token_id=None).save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token and bool(loaded.chat_template)
    classifier = load_model(tmp_path, kind="sequence-classification", num_labels=2)
    assert classifier.config.pad_token_id == loaded.eos_token_id


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("float16") == torch.float16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("fp8")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("toaster")


def fake_gguf(tmp_path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF fake")
    return path


def test_gguf_cache_is_atomic_and_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    calls = []

    def broken(src, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    def working(src, out):
        calls.append(src)
        (out / "config.json").write_text("{}")

    gguf = fake_gguf(tmp_path)
    monkeypatch.setattr(packaged, "_convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        packaged.converted_gguf(gguf)
    cache_parent = tmp_path / "cache" / "gguf"
    assert list(cache_parent.iterdir()) == []  # nothing half-written is left behind

    monkeypatch.setattr(packaged, "_convert_gguf", working)
    first = packaged.converted_gguf(gguf)
    assert "converting GGUF m.gguf (once)" in capsys.readouterr().err
    packaged._announced.clear()  # as in a new process
    second = packaged.converted_gguf(gguf)
    assert first == second and len(calls) == 1 and (first / "config.json").is_file()
    assert "using cached conversion" in capsys.readouterr().err

    os.utime(gguf, ns=(0, 10**9))  # a replaced file (new mtime) is converted again
    assert packaged.converted_gguf(gguf) != first and len(calls) == 2


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNEFORGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert packaged.cache_root() == tmp_path / "tuneforge"
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "tf"))
    assert packaged.cache_root() == tmp_path / "tf"


@pytest.mark.slow
def test_minilm_loads_as_encoder():
    model = load_model("all-minilm-l6-v2", kind="encoder", device="cpu")
    tok = load_tokenizer("all-minilm-l6-v2")
    assert model.config._name_or_path == "all-minilm-l6-v2"
    out = model(**tok(["a test sentence"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 384


@pytest.mark.slow
def test_smollm2_via_cache_replies_greedily():
    from tuneforge.eval.generation import generate_with

    model = load_model("smollm2-135m-instruct", device="cpu")
    tok = load_tokenizer("smollm2-135m-instruct")
    assert model.config._name_or_path == "smollm2-135m-instruct"
    assert packaged.gguf_cache_dir(resolve_model("smollm2-135m-instruct").location).is_dir()
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                tokenize=False, add_generation_prompt=True)
    reply = generate_with(model, tok, "What is the capital of France?", max_new_tokens=12)
    assert reply[0].strip() and "Paris" in reply[0]

"""Model cards (io/model_card.py) parsed back with huggingface_hub.ModelCard, and `tuneforge push` without a token
or network (io/hub.py): a clear error, never a hang."""
import json
import socket
import time

import pytest
from huggingface_hub import ModelCard

import tuneforge.models as models
from tuneforge.cli.main import main
from tuneforge.errors import TuneforgeError
from tuneforge.io.hub import push_folder
from tuneforge.io.model_card import data_license
from tuneforge.models.tiny import tiny_bert, tiny_llama, tiny_tokenizer
from tuneforge.train import api

RECORDS = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok", "why")]
MIT = "MIT License\n\nCopyright (c) 2022 Someone\n\nPermission is hereby granted, free of charge, ..."


@pytest.fixture
def trained(tmp_path, monkeypatch, tiny_base_dir):
    """A LoRA run on the tiny Llama (saved as a local base folder), data in a folder with an MIT LICENSE."""
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data_dir = tmp_path / "greetings"
    data_dir.mkdir()
    (data_dir / "LICENSE").write_text(MIT)
    (data_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(data_dir / "train.jsonl"), "validation": str(data_dir / "train.jsonl"),
                 "max_length": 64},
        "train": {"max_steps": 2, "micro_batch_size": 2, "learning_rate": 1e-3},
        "output_dir": str(tmp_path / "run"),
    }
    result = api.train(config, progress=False)
    return result, tmp_path / "run" / "adapter"


def test_adapter_card(trained):
    result, adapter = trained
    card = ModelCard.load(adapter / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "tiny-llama" and data["library_name"] == "peft"
    assert data["pipeline_tag"] == "text-generation" and data["license"] == "mit"
    assert data["datasets"] == ["greetings"]
    assert {"tuneforge", "peft", "lora", "sft"} <= set(data["tags"])
    facts = data["tuneforge"]
    assert facts["method"]["name"] == "lora" and facts["method"]["r"] == 2 and facts["method"]["lora_alpha"] == 4
    assert facts["hyperparameters"]["learning_rate"] == 1e-3 and facts["steps"] == result.steps == 2
    assert facts["metrics"] == {"train_loss": result.train_loss, **result.eval_metrics}
    body = card.text
    for needle in ("## Training", "| r | 2 |", "| learning_rate | 0.001 |", "## Data", "license: mit",
                   "## Results", f"| eval_loss | {result.eval_metrics['eval_loss']:.6g} |",
                   "PeftModel.from_pretrained", "tuneforge.load_adapter", "2 optimizer steps"):
        assert needle in body, needle


def test_peft_loads_the_adapter_folder_with_its_card(trained, tiny_base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, adapter = trained
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), adapter)
    assert model.peft_config["default"].r == 2


def test_merged_model_card_carries_the_training_facts(trained, tiny_base_dir, tmp_path):
    from tuneforge.io.merge import merge

    result, adapter = trained
    out = merge(tiny_base_dir, adapter, tmp_path / "merged")
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "merged" in data["tags"] and "base_model" not in data  # a local base folder is no Hub id
    assert data["tuneforge"]["metrics"]["train_loss"] == result.train_loss
    assert data["tuneforge"]["merged_from"] == str(adapter) and data["license"] == "mit"
    assert "AutoModelForCausalLM.from_pretrained" in ModelCard.load(out / "README.md").text


def test_sentence_transformers_export_card_loads_with_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer
    from tuneforge.index.encoder import write_sentence_transformer

    model = tiny_bert(seed=0)
    out = write_sentence_transformer(model, tiny_tokenizer(), tmp_path / "st", pooling="mean", max_seq_length=32)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert data["tuneforge"]["pooling"] == "mean" and "SentenceTransformer(" in card.text
    encoder = SentenceTransformer(str(out), device="cpu")
    assert encoder.encode(["a b c"]).shape == (1, model.config.hidden_size)


def test_plain_save_adapter_writes_a_method_card(tmp_path):
    import tuneforge.methods as M
    from tuneforge.config import config_from_dict
    from tuneforge.io import save_adapter

    model = tiny_llama()
    M.add_adapter(model, config_from_dict({"method": {"name": "lora", "r": 3, "target_modules": ["q_proj"]}}).method)
    save_adapter(model, tmp_path / "a", base_model_name="smollm2-135m-instruct")
    data = ModelCard.load(tmp_path / "a" / "README.md").data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and data["tuneforge"]["method"]["r"] == 3
    assert "license" not in data and "datasets" not in data


@pytest.mark.parametrize("text, expected", [
    (MIT, "mit"),
    ("                                 Apache License\n                           Version 2.0, January 2004", "apache-2.0"),
    ("Attribution-NonCommercial 4.0 International\n\n=====", "cc-by-nc-4.0"),
    ("Attribution-ShareAlike 4.0 International", "cc-by-sa-4.0"),
    ("\nNotes on datasets and licenses\n---", None),
])
def test_data_license_from_the_data_folder(tmp_path, text, expected):
    (tmp_path / "LICENSE").write_text(text)
    (tmp_path / "train.jsonl").write_text("{}\n")
    assert data_license(tmp_path / "train.jsonl") == expected
    assert data_license(tmp_path / "missing" / "train.jsonl") is None


@pytest.fixture
def folder(tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "README.md").write_text("---\nlibrary_name: peft\n---\n")
    return path


def test_push_without_a_token_says_so(folder, capsys):
    with pytest.raises(TuneforgeError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push_folder(folder, "someone/model")
    with pytest.raises(SystemExit) as info:
        main(["push", str(folder), "someone/model"])
    assert info.value.code == 2 and "no Hugging Face token" in capsys.readouterr().err


def test_push_offline_fails_fast(folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TuneforgeError, match="HF_HUB_OFFLINE is set"):
        push_folder(folder, "someone/model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(TuneforgeError, match=f"cannot reach http://127.0.0.1:{port}"):
        push_folder(folder, "someone/model")


@pytest.mark.timeout(60)
def test_push_to_a_silent_host_gives_up_after_the_timeout(folder, monkeypatch):
    """A listening socket that never accepts: with a full backlog the TCP handshake gets no answer, like a
    firewalled network. The push must end after its timeout, not hang."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the accept backlog so further handshakes are not answered
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(server.getsockname())
            fillers.append(c)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(TuneforgeError, match="cannot reach|failed"):
            push_folder(folder, "someone/model", timeout=1.0)
        assert time.monotonic() - start < 30
    finally:
        for c in fillers:
            c.close()
        server.close()


def test_push_refuses_bad_input(folder, tmp_path):
    with pytest.raises(TuneforgeError, match="not a folder with files"):
        push_folder(tmp_path / "missing", "someone/model")
    with pytest.raises(TuneforgeError, match="is not valid"):
        push_folder(folder, "not a repo id!")

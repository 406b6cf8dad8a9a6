"""Loading adapters and bases safely: pickle weights only with an explicit opt-in (CLI, config, Python API),
every broken adapter named by its path (no traceback), outputs with the user's umask."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from tuneforge.cli.main import main
from tuneforge.errors import AdapterMismatch, ModelNotFound, PickleRefused, TuneforgeError
from tuneforge.io import load_adapter, save_adapter
from tuneforge.methods import add_adapter
from tuneforge.models import load_model, tiny_llama, tiny_tokenizer


def _lora(tmp_path, name="adapter"):
    model = tiny_llama()
    torch.manual_seed(1)
    add_adapter(model, "lora", r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return save_adapter(model, tmp_path / name, base_model_name="tiny-llama")


@pytest.fixture
def pickle_adapter(tmp_path):
    """The same adapter with its weights as adapter_model.bin (torch.save), as old peft versions wrote them."""
    from safetensors.torch import load_file

    path = _lora(tmp_path, "pickled")
    tensors = load_file(str(path / "adapter_model.safetensors"))
    (path / "adapter_model.safetensors").unlink()
    torch.save(tensors, path / "adapter_model.bin")
    return path


@pytest.fixture
def pickle_base(tmp_path):
    """A base folder whose only weights are pytorch_model.bin."""
    from safetensors.torch import load_file

    path = tmp_path / "pickle-base"
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    assert (path / "pytorch_model.bin").is_file() and not list(path.glob("*.safetensors"))
    return path


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def test_a_pickle_adapter_needs_allow_pickle(pickle_adapter):
    with pytest.raises(PickleRefused, match="adapter_model.bin.*adapter_model.safetensors.*--allow-pickle") as info:
        load_adapter(tiny_llama(), pickle_adapter)
    assert str(pickle_adapter / "adapter_model.bin") in str(info.value)
    model = tiny_llama()
    load_adapter(model, pickle_adapter, allow_pickle=True)
    reference = tiny_llama()
    load_adapter(reference, pickle_adapter, allow_pickle=True)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_a_pickle_only_base_needs_allow_pickle(pickle_base):
    with pytest.raises(PickleRefused, match="pytorch_model.bin") as info:
        load_model(pickle_base, device="cpu")
    assert str(pickle_base / "pytorch_model.bin") in str(info.value)
    loaded = load_model(pickle_base, device="cpu", allow_pickle=True)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded(ids).logits, tiny_llama()(ids).logits, rtol=0, atol=0)


def test_the_cli_refuses_pickles_without_the_flag(pickle_adapter, pickle_base, tiny_base_dir, tmp_path, capsys):
    code, err = run_cli(["generate", "-p", "hi", "--base", str(tiny_base_dir), "--adapter", str(pickle_adapter),
                         "--max-new-tokens", "2", "--device", "cpu"], capsys)
    assert code != 0 and "adapter_model.bin" in err and "Traceback" not in err
    assert run_cli(["generate", "-p", "hi", "--base", str(tiny_base_dir), "--adapter", str(pickle_adapter),
                    "--max-new-tokens", "2", "--device", "cpu", "--allow-pickle"], capsys)[0] == 0
    code, err = run_cli(["generate", "-p", "hi", "--base", str(pickle_base), "--max-new-tokens", "2",
                         "--device", "cpu"], capsys)
    assert code != 0 and "pytorch_model.bin" in err and "safetensors" in err
    code, err = run_cli(["merge", "--adapter", str(pickle_adapter), "--base", str(tiny_base_dir), "--out",
                         str(tmp_path / "merged")], capsys)
    assert code != 0 and "adapter_model.bin" in err and not (tmp_path / "merged").exists()
    assert run_cli(["merge", "--adapter", str(pickle_adapter), "--base", str(tiny_base_dir), "--out",
                    str(tmp_path / "merged"), "--allow-pickle"], capsys)[0] == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    code, err = run_cli(["serve", "--base", str(pickle_base), "--data-dir", str(tmp_path / "d")], capsys)
    assert code != 0 and "pytorch_model.bin" in err
    code, err = run_cli(["serve", "--base", str(tiny_base_dir), "--adapters", str(pickle_adapter),
                         "--data-dir", str(tmp_path / "d")], capsys)
    assert code != 0 and "adapter_model.bin" in err


def test_the_config_key_allows_a_pickle_base(pickle_base):
    from tuneforge.config import config_from_dict
    from tuneforge.train.api import _load_model

    with pytest.raises(PickleRefused):
        _load_model(config_from_dict({"model": {"name": str(pickle_base), "device": "cpu"}}))
    model = _load_model(config_from_dict({"model": {"name": str(pickle_base), "device": "cpu",
                                                    "allow_pickle": True}}))
    assert type(model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("damage, error, fragment", [
    (lambda p: (p / "adapter_model.safetensors").write_bytes(
        (p / "adapter_model.safetensors").read_bytes()[:100]), AdapterMismatch, "adapter_model.safetensors"),
    (lambda p: (p / "adapter_model.safetensors").write_bytes(b""), AdapterMismatch, "adapter_model.safetensors"),
    (lambda p: (p / "adapter_config.json").write_text("[1, 2]"), AdapterMismatch, "expected a JSON object"),
    (lambda p: (p / "adapter_config.json").write_text("{oops"), AdapterMismatch, "adapter_config.json:1"),
    (lambda p: (p / "adapter_config.json").write_text('{"peft_type": "NOPE"}'), AdapterMismatch, "NOPE"),
    (lambda p: (p / "adapter_model.safetensors").unlink(), ModelNotFound, "no adapter_model.safetensors"),
    (lambda p: (p / "adapter_config.json").unlink(), ModelNotFound, "no adapter_config.json"),
])
def test_a_broken_adapter_is_named_by_its_path(tmp_path, damage, error, fragment):
    from tuneforge.io.adapter_files import check_adapter_files

    path = _lora(tmp_path)
    damage(path)
    for load in (lambda: load_adapter(tiny_llama(), path), lambda: check_adapter_files(path)):
        with pytest.raises(error, match=fragment) as info:
            load()
        assert str(path) in str(info.value)
    assert issubclass(error, TuneforgeError)


def test_a_missing_adapter_folder_is_named(tmp_path):
    with pytest.raises(ModelNotFound, match=str(tmp_path / "nowhere")):
        load_adapter(tiny_llama(), tmp_path / "nowhere")


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = _lora(tmp_path, "shared")
        from tuneforge.io.tempdirs import current_umask

        assert current_umask() == 0o022
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for child in path.iterdir():
        assert stat.S_IMODE(child.stat().st_mode) == 0o644, child
    old = os.umask(0o077)
    try:
        private = _lora(tmp_path, "private")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    json.loads((path / "adapter_config.json").read_text())


def test_checkpoints_follow_the_umask(tmp_path):
    from tuneforge.train.checkpoint import temp_dir

    old = os.umask(0o022)
    try:
        made = temp_dir(tmp_path / "checkpoints", step=3)
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.stat().st_mode) == 0o755


def test_every_other_loading_command_refuses_pickles_without_the_flag(pickle_adapter, pickle_base, tiny_base_dir,
                                                                      tmp_path, capsys):
    """combine, export and the index commands load adapters or bases too: the same opt-in."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"doc_id": "d1", "text": "a document"}) + "\n")
    refused = [
        (["combine", str(pickle_adapter), "--out", str(tmp_path / "c")], "adapter_model.bin"),  # before the base
        (["export", "--adapter", str(pickle_adapter), "--base", str(tiny_base_dir), "--out",
          str(tmp_path / "m.gguf")], "adapter_model.bin"),
        (["export", "--base", str(pickle_base), "--out", str(tmp_path / "m.gguf")], "pytorch_model.bin"),
        (["index", "build", "--model", str(pickle_base), "--corpus", str(corpus), "--out", str(tmp_path / "i")],
         "pytorch_model.bin"),
    ]
    for args, name in refused:
        code, err = run_cli(args, capsys)
        assert code == 2 and name in err and "--allow-pickle" in err and "Traceback" not in err, args
    code, _ = run_cli(["combine", str(pickle_adapter), "--base", str(tiny_base_dir), "--out", str(tmp_path / "c"),
                       "--allow-pickle"], capsys)
    assert code == 0 and (tmp_path / "c" / "adapter_model.safetensors").is_file()
    from tuneforge.index.encoder import SentenceEncoder

    with pytest.raises(PickleRefused):
        SentenceEncoder.load(pickle_base, device="cpu")
    assert SentenceEncoder.load(pickle_base, device="cpu", allow_pickle=True).dim == 64

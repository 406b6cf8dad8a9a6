"""`tuneforge serve`: flags reach ServeConfig; unsafe or impossible set-ups fail before anything listens."""
from __future__ import annotations

import pytest

from tuneforge.cli.main import main
from tuneforge.serve.config import ServeConfig, is_loopback


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_help_lists_the_options(capsys):
    code, out, _ = run_cli(["serve", "--help"], capsys)
    assert code == 0
    for flag in ("--base", "--adapters", "--data-dir", "--host", "--port", "--api-key", "--job-config"):
        assert flag in out


def test_no_api_key_means_loopback_only(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEFORGE_API_KEYS", raising=False)
    code, _, err = run_cli(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "refusing to listen on 0.0.0.0 without authentication" in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_api_keys_come_from_the_environment_too(monkeypatch):
    monkeypatch.setenv("TUNEFORGE_API_KEYS", "k1, k2")
    config = ServeConfig(api_keys=["k0"], host="0.0.0.0")
    assert config.api_keys == ["k0", "k1", "k2"]
    config.validate()  # keys given: listening beyond loopback is allowed


def test_adapters_that_cannot_share_the_base_are_refused_at_start(capsys, tmp_path, tiny_base_dir):
    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter
    from tuneforge.models import tiny_llama

    model = tiny_llama()
    add_adapter(model, "full")
    save_adapter(model, tmp_path / "adapters" / "whole")
    code, _, err = run_cli(["serve", "--base", str(tiny_base_dir), "--adapters", str(tmp_path / "adapters"),
                            "--data-dir", str(tmp_path / "data")], capsys)
    assert code == 2 and "cannot share a served base" in err and "whole" in err


def test_served_base_name_is_a_safe_id():
    assert ServeConfig(base="smollm2-135m-instruct").served_base_name() == "smollm2-135m-instruct"
    assert ServeConfig(base="/models/My Model/").served_base_name() == "My-Model"
    assert ServeConfig(base="x/y.gguf").served_base_name() == "y"


def test_adapters_are_found_in_adapter_run_and_parent_folders(tmp_path):
    from tuneforge.serve.app import find_adapters

    from .conftest import make_adapter

    make_adapter(tmp_path / "runs" / "sum" / "adapter", seed=1)  # a training run's output folder
    make_adapter(tmp_path / "runs" / "chat", seed=2)  # an adapter folder
    (tmp_path / "runs" / "notes").mkdir()  # neither: skipped
    make_adapter(tmp_path / "one", seed=3)
    found = find_adapters([str(tmp_path / "runs"), str(tmp_path / "one"), str(tmp_path / "runs" / "sum")], {"base"})
    assert found == {"chat": tmp_path / "runs" / "chat", "sum": tmp_path / "runs" / "sum" / "adapter",
                     "one": tmp_path / "one"}

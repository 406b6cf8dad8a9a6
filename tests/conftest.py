"""Shared test set-up: no network, and tiny models for the fast tests."""
import os

# Tests must never reach the hub: a hub id fails fast and clearly instead of hanging on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Data set references (`alpaca:train`) resolve to the repository's own slices, as in a plain clone.
os.environ.pop("TUNEFORGE_DATA", None)

import sys  # noqa: E402

import pytest  # noqa: E402

try:
    # rouge-score imports absl, whose log handler keeps the sys.stderr of the moment it is created (pytest's capture
    # file) and closes that stream whenever logging's handlers are cleared (uvicorn's dictConfig in `serve` does):
    # a later test then dies with "I/O operation on closed file". Point it at the real stderr, which absl never closes.
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
except ImportError:
    pass


@pytest.fixture
def tiny_model():
    from tuneforge.models import tiny_llama

    return tiny_llama()


@pytest.fixture
def tiny_tok():
    from tuneforge.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def tiny_base_dir(tmp_path):
    """A tiny Llama + its tokenizer saved as a local model directory (what users point --base at)."""
    from tuneforge.models import tiny_llama, tiny_tokenizer

    path = tmp_path / "base"
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def pytest_configure(config):
    """Under pytest-xdist each worker gets one torch thread: two workers x two threads on two cores makes
    OpenMP spin-wait and runs many times slower than one thread each."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# Tests that compare numbers against an oracle (peft, trl, pyreft, an unpacked or one-process run) or a formula.
# `make test` runs them a second time under another CPU kernel family (ATEN_CPU_CAPABILITY), so a tolerance that
# only holds for the kernels of the machine it was tuned on fails on every machine, not just on some.
NUMERIC_PATHS = ("tests/methods/", "tests/train/", "tests/quant/", "tests/models/", "tests/data/test_packing.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.relative_to(config.rootpath).as_posix().startswith(NUMERIC_PATHS):
            item.add_marker(pytest.mark.numeric)

"""Shared set-up for the encoder tests: tiny BERT / Llama model directories (saved once per session, so the real
loaders and adapter files are exercised) and the fixture data slices."""
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "encoders"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT encoder + the byte-level tokenizer, as a local model directory."""
    from tuneforge.models.tiny import tiny_bert, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert(seed=0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from tuneforge.models.tiny import tiny_llama, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(seed=0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def classify_config(model_dir, out, method=None, **train):
    return {
        "model": {"name": str(model_dir), "kind": "sequence-classification", "num_labels": 2},
        "method": method or {"name": "lora", "r": 4, "target_modules": "all-linear"},
        "task": {"name": "classify", "labels": ["negative", "positive"]},
        "data": {"train": str(FIXTURES / "sst2_train.jsonl"), "validation": str(FIXTURES / "sst2_validation.jsonl"),
                 "max_length": 48},
        "train": {"epochs": 1, "micro_batch_size": 16, "learning_rate": 1e-3, **train},
        "output_dir": str(out),
    }


def embed_config(model_dir, out, loss="mnrl", method=None):
    if loss == "mnrl":
        train, validation = FIXTURES / "scifact" / "qrels_train.jsonl", FIXTURES / "scifact" / "qrels_validation.jsonl"
    else:
        train, validation = FIXTURES / "stsb_train.jsonl", FIXTURES / "stsb_validation.jsonl"
    return {
        "model": {"name": str(model_dir), "kind": "encoder"},
        "method": method or {"name": "lora", "r": 4, "target_modules": "all-linear"},
        "task": {"name": "embed", "loss": loss},
        "data": {"train": str(train), "validation": str(validation), "max_length": 64},
        "train": {"epochs": 1, "micro_batch_size": 8, "learning_rate": 1e-3},
        "output_dir": str(out),
    }

"""A tiny `train()` run config for the end-to-end tests of this folder: the tiny Llama and tokenizer stand in for
the loaders (nothing is downloaded), data are alpaca records written to a JSONL file."""
import json

import tuneforge.models as models
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api

WORDS = ("hi", "yes", "no", "ok", "why", "so", "up", "go")
RECORDS = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in WORDS]
LONG = {"instruction": "x" * 80, "input": "", "output": "cut away"}  # 110 tokens: nothing trained at 64


def patch_loaders(monkeypatch) -> None:
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())


def write_records(path, records) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def run_config(tmp_path, records=RECORDS, **train) -> dict:
    data = write_records(tmp_path / "train.jsonl", records)
    settings = {"max_steps": 4, "micro_batch_size": 2, "learning_rate": 1e-2, "lr_schedule": "constant",
                "save_every": 2, "keep_last": 5, "seed": 3, **train}
    return {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "task": "sft",
        "data": {"train": data, "max_length": 64, "packing": False, "format": "alpaca"},
        "train": settings,
        "output_dir": str(tmp_path / "run"),
    }


def losses(result) -> dict:
    return {r["step"]: r["loss"] for r in result.history if "loss" in r}

"""fp32 master weights for base weights trained on a bf16 model (train/precision.py)."""
import json
import math

import pytest
import torch
import yaml

import tuneforge.methods as M
import tuneforge.models as models
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api
from tuneforge.train.precision import fp32_master_weights, restore_dtypes


def test_a_bf16_weight_cannot_take_a_small_adamw_step():
    """Why: AdamW's first step moves a weight by about lr; at 1.0, bf16 cannot represent 1 - 1e-4."""
    for dtype, moves in ((torch.bfloat16, False), (torch.float32, True)):
        weight = torch.nn.Parameter(torch.ones(4, dtype=dtype))
        optimizer = torch.optim.AdamW([weight], lr=1e-4, weight_decay=0.0)
        weight.sum().backward()
        optimizer.step()
        assert bool((weight != 1).all()) is moves


def test_only_trainable_bf16_parameters_become_fp32_and_come_back():
    model = tiny_llama(seed=1).to(torch.bfloat16)
    M.add_adapter(model, "last_k", k=1)
    M.mark_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(list(model.parameters()))
    changed = fp32_master_weights(model)
    assert len(changed) == len(trainable)
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if name in trainable else torch.bfloat16), name
    restore_dtypes(changed)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.fixture
def bf16_config(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1).to(torch.bfloat16))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data = tmp_path / "train.jsonl"
    records = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok")]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"model": {"name": "tiny-llama"}, "task": "sft",
            "data": {"train": str(data), "validation": str(data), "max_length": 64},
            "train": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 1e-3, "save_every": 3},
            "output_dir": str(tmp_path / "run")}


def test_full_fine_tuning_of_a_bf16_model_trains_fp32_master_weights(bf16_config, tmp_path, capsys):
    from safetensors.torch import load_file

    bf16_config["method"] = {"name": "full"}
    result = api.train(bf16_config, progress=False)
    assert result.steps == 3 and math.isfinite(result.train_loss)
    assert "in fp32 under bf16 autocast" in capsys.readouterr().out
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["train"]["bf16"] is True
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-3" / "trainable.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # resume continues from fp32 values


def test_adapters_on_a_bf16_model_are_unaffected(bf16_config, capsys):
    bf16_config["method"] = {"name": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]}
    api.train(bf16_config, progress=False)
    assert "fp32 master weights" not in capsys.readouterr().out


def letter_share(prompts, responses):
    return [sum(c.isalpha() for c in r) / max(1, len(r)) for r in responses]


def test_ppo_on_a_bf16_model_trains_fp32_master_weights_under_autocast(tmp_path, monkeypatch, capsys):
    """PPO runs its own loop: it gets the same fp32 copies of the trained base weights and the same autocast."""
    from safetensors.torch import load_file

    model = tiny_llama(seed=0, initializer_range=0.2).to(torch.bfloat16)
    monkeypatch.setattr(api, "_load_model", lambda cfg: model)
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in ("hello", "the", "a cat", "we")))
    config = {
        "model": {"name": "tiny-llama"},
        "method": {"name": "last_k", "k": 1},
        "task": {"name": "ppo", "reward_function": f"{__name__}:letter_share", "template": "raw",
                 "rollout_batch_size": 2, "max_new_tokens": 3, "max_prompt_length": 16, "ppo_epochs": 1},
        "data": {"train": str(data)},
        "train": {"max_steps": 2, "micro_batch_size": 2, "learning_rate": 1e-4, "save_every": 2},
        "output_dir": str(tmp_path / "run"),
    }
    result = api.train(config, progress=False)
    assert result.steps == 2 and math.isfinite(result.train_loss)
    assert "in fp32 under bf16 autocast" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["bf16"] is True
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-2" / "trainable.safetensors"))
    trained = [t for name, t in saved.items() if "value_head" not in name]
    assert trained and all(t.dtype == torch.float32 for t in trained)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters())  # back to the model's dtype

"""Checkpoints are written atomically, only the newest keep_last stay, and their content restores a run."""
import json
import random

import numpy as np
import pytest
import torch

from tuneforge.train import checkpoint as ckpt
from tuneforge.train import run_training
from tuneforge.train.optim import build_optimizer, build_scheduler

from .common import make_cfg, make_examples, make_model

EXAMPLES = make_examples(12, seed=5)


def test_keep_last_and_layout(tmp_path, sft_task):
    cfg = make_cfg(max_steps=7, save_every=2, keep_last=2)
    result = run_training(make_model(), sft_task, EXAMPLES, [], cfg, tmp_path, progress=False)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-6", "step-7"]  # no temp dirs left either
    assert result.checkpoint_dir == root / "step-7"
    files = sorted(p.name for p in (root / "step-7").iterdir())
    assert files == ["manifest.json", "optimizer.pt", "rng.pt", "scheduler.pt", "state.json", "trainable.safetensors"]
    state = json.loads((root / "step-7" / "state.json").read_text())
    assert state["global_step"] == 7 and state["total_steps"] == 7
    assert (state["epoch"], state["index"]) == (1, 2)  # 6 steps of 2 examples per epoch: step 7 opens epoch 1
    assert [r["step"] for r in state["history"] if "loss" in r] == list(range(1, 8))
    from safetensors.torch import load_file

    saved = load_file(str(root / "step-7" / "trainable.safetensors"))
    assert set(saved) == {n for n, p in make_model().named_parameters() if p.requires_grad}


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = make_model()
    cfg = make_cfg()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    first = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched, {"global_step": 1}, keep_last=1)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, model, opt, sched, {"global_step": 2}, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # no step-2, no temp dir, step-1 kept
    assert ckpt.latest_checkpoint(tmp_path) == first


def test_resaving_a_step_replaces_it(tmp_path):
    model = make_model()
    cfg = make_cfg()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    ckpt.save_checkpoint(tmp_path, 3, model, opt, sched, {"global_step": 3, "tag": "a"})
    ckpt.save_checkpoint(tmp_path, 3, model, opt, sched, {"global_step": 3, "tag": "b"})
    assert [p.name for p in tmp_path.iterdir()] == ["step-3"]
    assert json.loads((tmp_path / "step-3" / "state.json").read_text())["tag"] == "b"


def test_listing_is_numeric_and_ignores_temp_dirs(tmp_path):
    for name in ("step-9", "step-10", ".tmp-step-11-abc", "notes"):
        (tmp_path / name).mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-9", "step-10"]


def test_rng_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, sft_task):
    run_training(make_model(), sft_task, EXAMPLES, [], make_cfg(max_steps=1), tmp_path, progress=False)
    model = make_model()
    model.lm_head.weight.requires_grad_(True)  # tied to the embeddings: a different trainable set
    with pytest.raises(Exception, match="does not match"):
        run_training(model, sft_task, EXAMPLES, [], make_cfg(max_steps=2), tmp_path, progress=False)

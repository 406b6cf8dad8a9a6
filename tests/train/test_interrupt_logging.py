"""Ctrl-C during a parameter update is held until the step is complete, log line included: the checkpoint it
leaves holds that step's metrics, so a resumed run reports every step exactly once (a serving job's progress
events are these lines)."""
import json
import os
import signal

import pytest
import torch

from tuneforge.train import run_training
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_cfg, make_examples, make_model

TRAIN = make_examples(12, seed=5)


def test_ctrl_c_inside_an_update_keeps_that_steps_log_line(tmp_path, monkeypatch):
    step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_ctrl_c(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives inside the guarded update of step 3
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_ctrl_c)
    cfg = make_cfg(max_steps=6, lr_schedule="constant")
    with pytest.raises(KeyboardInterrupt):
        run_training(make_model(), SFTTask(PAD), TRAIN, [], cfg, tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]
    state = json.loads((tmp_path / "checkpoints" / "step-3" / "state.json").read_text())
    assert [r["step"] for r in state["history"] if "loss" in r] == [1, 2, 3]

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    resumed = run_training(make_model(), SFTTask(PAD), TRAIN, [], cfg, tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6] and resumed.steps == 6

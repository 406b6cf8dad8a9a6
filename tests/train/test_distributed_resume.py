"""LoRA checkpoints resume on another number of processes: two processes stopped at step 2 finish on one, and one
process stopped at step 2 finishes on two, each with the adapter and losses of the uninterrupted one-process run
(micro_batch_size is per process, so the global batch 2 x 2 = 1 x 4 is kept); a resume that would change the
global batch is refused. Shares test_distributed.py's set-up, workers and tolerance helper."""
import json

import pytest

from tuneforge.errors import ConfigError
from tuneforge.train import api

from .test_distributed import _spawn, adapter, assert_close, config, setup, train_losses  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def runs(setup):  # noqa: F811 - the imported fixture
    api.train(config(setup, "lora_1to2", max_steps=2, micro_batch_size=4), progress=False)  # 1 process: steps 1-2
    _spawn([{"config": config(setup, "lora_1to2")},  # 2 processes resume it: steps 3-5
            {"config": config(setup, "lora_2to1", max_steps=2)}])  # 2 processes: steps 1-2
    with pytest.raises(ConfigError) as refused:  # one process with the per-process batch of two: half the batch
        api.train(config(setup, "lora_2to1"), progress=False)
    api.train(config(setup, "lora_2to1", micro_batch_size=4), progress=False)  # 1 process resumes: steps 3-5
    api.train(config(setup, "lora_whole", micro_batch_size=4), progress=False)  # the uninterrupted reference
    return setup, str(refused.value)


def test_two_processes_resume_on_one(runs):
    root, _ = runs
    step2 = root / "lora_2to1" / "checkpoints" / "step-2"
    assert json.loads((step2 / "state.json").read_text())["world_size"] == 2
    assert len(train_losses(root, "lora_2to1")) == 5
    assert_close(adapter(root, "lora_2to1"), adapter(root, "lora_whole"))
    assert train_losses(root, "lora_2to1") == pytest.approx(train_losses(root, "lora_whole"), rel=1e-5)


def test_one_process_resumes_on_two(runs):
    root, _ = runs
    final = json.loads((root / "lora_1to2" / "checkpoints" / "step-5" / "state.json").read_text())
    assert final["world_size"] == 2 and final["global_step"] == 5
    assert_close(adapter(root, "lora_1to2"), adapter(root, "lora_whole"))
    assert train_losses(root, "lora_1to2") == pytest.approx(train_losses(root, "lora_whole"), rel=1e-5)


def test_a_resume_that_changes_the_global_batch_is_refused(runs):
    _, message = runs
    assert "train.micro_batch_size x processes: 2 x 2 -> 2 x 1 (the global batch changes)" in message
    assert "--no-resume" in message

"""A step checkpoint becomes the adapter the run would have saved had it stopped at that step (a learning curve
from one run's checkpoints rests on this), and a folder that is no checkpoint is refused by name."""
import json

import pytest
from safetensors.torch import load_file

from tuneforge.errors import TuneforgeError
from tuneforge.train import api
from tuneforge.train.checkpoint_adapter import adapter_from_checkpoint

from .runs import patch_loaders, run_config


@pytest.fixture(autouse=True)
def loaders(monkeypatch):
    patch_loaders(monkeypatch)


def weights(adapter_dir):
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_checkpoint_adapters_equal_the_adapters_of_runs_stopped_there(tmp_path):
    api.train(run_config(tmp_path / "long", max_steps=4, save_every=2), progress=False)
    api.train(run_config(tmp_path / "short", max_steps=2), progress=False)  # constant lr: the same first 2 steps
    run = tmp_path / "long" / "run"
    at_2 = adapter_from_checkpoint(run / "checkpoints" / "step-2")
    at_4 = adapter_from_checkpoint(run / "checkpoints" / "step-4", tmp_path / "four")
    assert at_2 == run / "adapter-step-2" and at_4 == tmp_path / "four"
    for converted, saved in ((at_2, tmp_path / "short" / "run" / "adapter"), (at_4, run / "adapter")):
        got, want = weights(converted), weights(saved)
        assert set(got) == set(want) and all(got[k].equal(want[k]) for k in want)  # copies: bit for bit
        assert json.loads((converted / "adapter_config.json").read_text()) == json.loads(
            (saved / "adapter_config.json").read_text())
    assert not all(weights(at_2)[k].equal(weights(at_4)[k]) for k in weights(at_4))  # two more steps moved it


def test_a_folder_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "step-3").mkdir()
    with pytest.raises(TuneforgeError, match="not a training checkpoint"):
        adapter_from_checkpoint(tmp_path / "step-3")

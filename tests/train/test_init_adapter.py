"""train.init_adapter: a run's adapter starts from saved weights (a second on-policy DPO round starts where the
first ended), and a saved adapter of another shape or method is refused before anything trains."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.errors import ConfigError
from tuneforge.train import api

from .test_dpo import dpo_config  # noqa: F401 - the fixture: a tiny Llama DPO run with LoRA r=4


def saved(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_a_run_starts_from_the_saved_adapter(dpo_config, tmp_path):  # noqa: F811
    first = api.train(dpo_config, progress=False)
    before = saved(first.output_dir)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in before.items())  # it trained

    # one step at a learning rate far below float32's resolution of these weights (AdamW moves each by ~lr):
    # the run's adapter is the saved one, bit for bit, while a fresh run's B (initialised to 0) stays ~lr
    second = copy.deepcopy(dpo_config)
    second["train"].update(init_adapter=str(tmp_path / "run" / "adapter"), max_steps=1, learning_rate=1e-30,
                           eval_every=None, weight_decay=0.0)
    second["output_dir"] = str(tmp_path / "round2")
    api.train(second, progress=False)
    after = saved(tmp_path / "round2")
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key

    fresh = copy.deepcopy(second)
    del fresh["train"]["init_adapter"]
    fresh["output_dir"] = str(tmp_path / "fresh")
    api.train(fresh, progress=False)
    assert all(v.abs().max() < 1e-20 for k, v in saved(tmp_path / "fresh").items() if k.endswith("lora_B.weight"))


def test_another_adapter_is_refused_by_name(dpo_config, tmp_path):  # noqa: F811
    api.train(dpo_config, progress=False)
    other = copy.deepcopy(dpo_config)
    other["method"]["r"] = 8
    other["train"]["init_adapter"] = str(tmp_path / "run" / "adapter")
    other["output_dir"] = str(tmp_path / "round2")
    with pytest.raises(ConfigError, match=r"train\.init_adapter.*r: 4 saved, 8 configured"):
        api.train(other, progress=False)
    assert not (tmp_path / "round2" / "adapter").exists()


def test_a_missing_folder_is_a_config_error(dpo_config, tmp_path):  # noqa: F811
    dpo_config["train"]["init_adapter"] = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"train\.init_adapter.*nope.*no such directory"):
        api.train(dpo_config, progress=False)

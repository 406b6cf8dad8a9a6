"""Every path that loads a run's base model reads the whole `model` section, quantisation included: an adapter
trained with QLoRA is evaluated on the 4-bit base it was trained on, not on a dense one."""
import dataclasses

import pytest
import yaml

pytest.importorskip("bitsandbytes")

from tuneforge.config import ModelConfig, load_config  # noqa: E402
from tuneforge.models import from_config  # noqa: E402
from tuneforge.quant import quantization_of  # noqa: E402


def qlora_config(tmp_path, base_dir):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(base_dir), "device": "cpu", "quantization": "nf4", "double_quant": False},
        "method": {"name": "lora", "r": 2, "target_modules": ["q_proj"]},
        "output_dir": str(tmp_path / "run"),
    }))
    return load_config(path)


def test_eval_of_a_qlora_config_loads_the_quantised_base(tmp_path, tiny_base_dir):
    from tuneforge.eval.harness import load_base

    model, _ = load_base(qlora_config(tmp_path, tiny_base_dir))
    facts = quantization_of(model)
    assert facts is not None and facts.quantization == "nf4" and facts.double_quant is False


def test_interpolation_loads_the_base_dense(tmp_path, tiny_base_dir):
    from tuneforge.eval.harness import load_base

    model, _ = load_base(qlora_config(tmp_path, tiny_base_dir), quantization=None)
    assert quantization_of(model) is None


def test_every_loading_key_of_model_config_reaches_load_model(monkeypatch):
    seen = {}
    monkeypatch.setattr(from_config, "load_model", lambda name, **kw: seen.update(kw, name=name))
    from_config.load_model_for(ModelConfig(name="x", kind="sequence-classification", num_labels=3))
    assert set(seen) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert seen["num_labels"] == 3 and seen["name"] == "x"
    from_config.load_model_for(ModelConfig(name="x", kind="sequence-classification", num_labels=3), kind="encoder")
    assert seen["kind"] == "encoder" and seen["num_labels"] is None

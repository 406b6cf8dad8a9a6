import dataclasses
from typing import Literal, Optional

import pytest
import yaml

from tuneforge.config import (
    RunConfig,
    Source,
    build_dataclass,
    dump_config,
    load_config,
    parse_yaml,
)
from tuneforge.errors import ConfigError

GOOD = """\
model:
  name: smollm2-135m-instruct
method:
  name: lora
  r: 16
  target_modules: [q_proj, v_proj]
data:
  train: data/train.jsonl
  max_length: 256
train:
  learning_rate: 1e-4
  epochs: 2
output_dir: runs/demo
"""


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_config_is_typed(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg, RunConfig)
    assert cfg.train.learning_rate == pytest.approx(1e-4) and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.epochs == 2 and cfg.train.micro_batch_size == 4
    assert cfg.method.r == 16 and cfg.method.target_modules == ["q_proj", "v_proj"]
    assert type(cfg.method).method == "lora"
    assert cfg.data.max_length == 256 and cfg.data.train == "data/train.jsonl"
    assert cfg.model.kind == "causal-lm" and cfg.task == "sft" and cfg.output_dir == "runs/demo"
    assert cfg.eval.metrics == ["rouge"]


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg.model.name == "smollm2-135m-instruct"
    assert type(cfg.method).method == "lora"
    assert cfg.train.lr_schedule == "cosine"


def test_unknown_key_names_file_line_key_and_suggests(tmp_path):
    path = write(tmp_path, GOOD.replace("  epochs: 2", "  epochs: 2\n  lerning_rate: 3"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 13, "train.lerning_rate")
    assert "did you mean 'learning_rate'" in str(err)
    assert str(err).startswith(f"{path}:13")


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + "trian:\n  epochs: 1\n"))
    assert info.value.line == 14 and info.value.key == "trian" and "did you mean 'train'" in str(info.value)


def test_wrong_type_names_expected_type(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("epochs: 2", "epochs: two")))
    assert info.value.line == 12 and info.value.key == "train.epochs"
    assert "expected an integer" in str(info.value)
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(write(tmp_path, GOOD), ["train.bf16=3"])


def test_int_accepted_for_float_and_bool_rejected_for_int(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["train.learning_rate=1", "train.weight_decay=0"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(write(tmp_path, GOOD), ["train.epochs=true"])


def test_overrides_set_nested_values_and_report_their_origin(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_config(path, ["train.max_steps=5", "method.lora_alpha=32", "eval.metrics=[rouge, bleu]",
                             "model.num_labels=null", "task=sft"])
    assert cfg.train.max_steps == 5 and cfg.method.lora_alpha == 32
    assert cfg.eval.metrics == ["rouge", "bleu"]
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.lr=0.1"])
    assert info.value.file == "--set train.lr=0.1" and info.value.key == "train.lr"
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(path, ["output_dir.x=1"])


def test_method_errors_point_at_their_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("  r: 16", "  r: 0")))
    assert (info.value.line, info.value.key) == (5, "method.r")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("  r: 16", "  rank: 16")))
    assert (info.value.line, info.value.key) == (5, "method.rank")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("name: lora", "name: lorra")))
    assert (info.value.line, info.value.key) == (4, "method.name") and "did you mean 'lora'" in str(info.value)


def test_section_validate_errors_get_a_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace("max_length: 256", "max_length: 1")))
    assert (info.value.line, info.value.key) == (9, "data.max_length")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), ["train.lr_schedule=cosin"])
    assert "did you mean 'cosine'" in str(info.value)
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(write(tmp_path, GOOD), ["task=nope"])


def test_yaml_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  epochs: [1\n"))
    assert info.value.line is not None
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  epochs: 1\n  epochs: 2\n"))
    assert (info.value.line, info.value.key) == (3, "train.epochs") and "duplicate" in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["train.max_steps=3"])
    dumped = yaml.safe_dump(dump_config(cfg))
    again = load_config(write(tmp_path, dumped, name="resolved.yaml"))
    assert again == cfg


@dataclasses.dataclass
class Inner:
    size: int = 1
    """How many."""
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outer:
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5
    label: Optional[str] = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_build_dataclass_generic_nested():
    data, source = parse_yaml("mode: b\nrate: '1e-3'\ninner:\n  size: 3\n  tags: [x, y]\n", file="x.yaml")
    obj = build_dataclass(Outer, data, source)
    assert obj == Outer(mode="b", rate=1e-3, label=None, inner=Inner(size=3, tags=["x", "y"]))
    bad = [
        ("inner:\n  tags: [x, true]\n", 2, "inner.tags", "expected a string"),
        ("inner:\n  tags: x\n", 2, "inner.tags", "a list of strings"),
        ("inner:\n  sise: 2\n", 2, "inner.sise", "did you mean 'size'"),
        ("mode: c\n", 1, "mode", "not one of"),
        ("rate: fast\n", 1, "rate", "expected a number"),
        ("label: [1]\n", 1, "label", "a string or null"),
        ("inner: 3\n", 1, "inner", "mapping of Inner fields"),
    ]
    for text, line, key, message in bad:
        data, source = parse_yaml(text, file="x.yaml")
        with pytest.raises(ConfigError) as info:
            build_dataclass(Outer, data, source)
        assert (info.value.file, info.value.line, info.value.key) == ("x.yaml", line, key), text
        assert message in str(info.value), (text, str(info.value))


def test_build_dataclass_without_source():
    assert build_dataclass(Inner, {"size": 2}).size == 2
    with pytest.raises(ConfigError, match="unknown key"):
        build_dataclass(Inner, {"nope": 1}, Source())


def test_checkpoint_layers_need_checkpointing_and_point_at_their_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  epochs: 2", "  epochs: 2\n  gradient_checkpointing_layers: 12"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.line, info.value.key) == (13, "train.gradient_checkpointing_layers")
    assert "needs gradient_checkpointing" in str(info.value)
    text = GOOD.replace("  epochs: 2", "  epochs: 2\n  gradient_checkpointing: true\n  gradient_checkpointing_layers: 12")
    cfg = load_config(write(tmp_path, text))
    assert cfg.train.gradient_checkpointing is True and cfg.train.gradient_checkpointing_layers == 12
    assert cfg.train.recompute_norms is True

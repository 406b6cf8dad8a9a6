"""Resume compares the resolved config with the checkpoint's: changes that cannot resume exactly (lr, batch size,
seed, schedule, LoRA rank, data) are refused naming each key and --no-resume, and config.yaml keeps the values
the checkpoint was trained with; harmless ones (evaluation / logging frequency, more steps on a constant
schedule) are applied, named, recorded, and the run resumes exactly."""
import pytest
import yaml

from tuneforge.errors import ConfigError
from tuneforge.train import api
from tuneforge.train.resume_check import compare

from .runs import RECORDS, losses, patch_loaders, run_config, write_records


@pytest.fixture(autouse=True)
def loaders(monkeypatch):
    patch_loaders(monkeypatch)


def stopped_run(tmp_path, **train):
    """A run stopped after 2 of 4 steps (its checkpoint step-2), as an interrupted run leaves it."""
    config = run_config(tmp_path, **train)
    api.train(config, overrides=["train.max_steps=2"], progress=False)
    return config


@pytest.mark.parametrize("override,key", [
    ("train.learning_rate=0.05", "train.learning_rate"), ("train.seed=4", "train.seed"),
    ("train.lr_schedule=cosine", "train.lr_schedule"), ("train.grad_accum_steps=2", "train.grad_accum_steps"),
    ("method.r=4", "method.r"), ("data.max_length=48", "data.max_length"), ("train.weight_decay=0.1", "train.weight_decay"),
])
def test_changes_that_cannot_resume_are_refused(tmp_path, override, key):
    config = stopped_run(tmp_path)
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"cannot resume exactly") as err:
        api.train(config, overrides=[override], progress=False)
    message = str(err.value)
    assert f"\n  {key}: " in message and "--no-resume" in message and err.value.key == key
    assert (tmp_path / "run" / "config.yaml").read_text() == before  # never a value the run did not use
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-2"]
    again = api.train(config, overrides=[override], progress=False, resume=False)  # the hint works
    assert again.steps == 4 and yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) is not None


def test_batch_size_change_is_refused_with_every_key_named(tmp_path):
    config = stopped_run(tmp_path)
    with pytest.raises(ConfigError) as err:
        api.train(config, overrides=["train.micro_batch_size=4", "train.learning_rate=0.02"], progress=False)
    assert "train.learning_rate: 0.01 -> 0.02" in str(err.value)
    assert "train.micro_batch_size x processes: 2 x 1 -> 4 x 1 (the global batch changes)" in str(err.value)


def test_changed_data_is_refused(tmp_path):
    """Same file name, other rows: the data order is a permutation of another number of examples."""
    config = stopped_run(tmp_path)
    write_records(tmp_path / "train.jsonl", RECORDS[:5])
    with pytest.raises(ConfigError, match="was trained on 8 examples, this run has 5") as err:
        api.train(config, progress=False)
    assert err.value.key == "data.train"


def test_harmless_changes_are_applied_named_and_recorded(tmp_path, capsys):
    straight = api.train(run_config(tmp_path / "a", max_steps=6), progress=False)
    config = stopped_run(tmp_path / "b")
    capsys.readouterr()
    resumed = api.train(config, overrides=["train.max_steps=6", "train.eval_every=3", "train.log_every=1",
                                           "train.save_every=3"], progress=False)
    printed = capsys.readouterr().out
    assert "resuming with changed settings that keep the run exact:" in printed
    assert "train.eval_every: None -> 3" in printed and "train.save_every: 2 -> 3" in printed
    assert "train.max_steps: 2 -> 6 (constant learning rate" in printed
    assert losses(resumed) == losses(straight)  # bit-identical
    recorded = yaml.safe_load((tmp_path / "b" / "run" / "config.yaml").read_text())
    assert recorded["train"]["max_steps"] == 6 and recorded["train"]["eval_every"] == 3
    assert yaml.safe_load((tmp_path / "b" / "run" / "checkpoints" / "step-6" / "config.yaml").read_text()) == recorded


def test_more_steps_on_a_decaying_schedule_are_refused():
    old = {"train": {"max_steps": 4, "lr_schedule": "cosine", "warmup_ratio": 0.0, "micro_batch_size": 2}}
    new = {"train": {"max_steps": 6, "lr_schedule": "cosine", "warmup_ratio": 0.0, "micro_batch_size": 2}}
    assert compare(old, new, step=2) == ([], ["train.max_steps: 4 -> 6 (the learning-rate schedule spans the total "
                                              "number of steps)"])
    constant = {"train": dict(new["train"], lr_schedule="constant")}
    assert compare({"train": dict(old["train"], lr_schedule="constant")}, constant, step=2)[1] == []
    ratio = {"train": dict(constant["train"], warmup_ratio=0.1)}
    assert compare({"train": dict(old["train"], lr_schedule="constant", warmup_ratio=0.1)}, ratio, step=2)[1]


def test_process_count_may_change_with_the_same_global_batch():
    old, new = {"train": {"micro_batch_size": 2}}, {"train": {"micro_batch_size": 4}}
    assert compare(old, new, old_processes=2, new_processes=1) == (
        ["train.micro_batch_size x processes: 2 x 2 -> 4 x 1 (the same global batch of 4)"], [])
    assert compare(old, old, old_processes=2, new_processes=1)[1] == [
        "train.micro_batch_size x processes: 2 x 2 -> 2 x 1 (the global batch changes)"]

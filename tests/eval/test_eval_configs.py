"""The shipped eval configs point at data that exists, and their tasks render on their first record."""
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.data import read_records
from tuneforge.eval.task_data import build_example

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if load_config(p).eval.tasks or load_config(p).eval.probes]


def test_the_issue_configs_are_here():
    names = {p.name for p in CONFIGS}
    assert {"eval_scitldr.yaml", "eval_multi30k.yaml", "eval_alpaca.yaml", "eval_forgetting.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_eval_tasks_read_their_data(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(path)
    for task in cfg.eval.tasks + cfg.eval.probes:
        for data in filter(None, (task.data, task.demonstrations)):
            assert Path(data).is_file(), f"{path.name}: task {task.name} data {data} missing"
        record = read_records(task.data)[0]
        example = build_example(task, record, task.data, 1)
        reference_free = task.reward_adapter is not None  # the reward metric scores prompt + reply alone
        assert example.text or (example.prompt and (example.references or task.type == "choice" or reference_free))

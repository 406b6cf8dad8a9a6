"""Job requests map onto run configs exactly as documented, and the store keeps state in SQLite (WAL) with
conditional status changes, so a cancel and a finishing worker end in one state."""
from __future__ import annotations

import sqlite3

import pytest

from tuneforge.config import config_from_dict
from tuneforge.serve.jobs import fine_tuned_name
from tuneforge.serve.jobspec import JobRequestError, build_run_config, load_template, parse_job_request
from tuneforge.serve.store import Store, new_id

BASES = ("base", "/models/base")


@pytest.fixture(scope="module")
def template():
    return load_template(None)


def test_auto_hyperparameters_take_the_template_and_the_multiplier_scales_its_learning_rate(template, tmp_path):
    spec = parse_job_request({"model": "base", "training_file": "file-x",
                              "hyperparameters": {"learning_rate_multiplier": 2.5, "n_epochs": "auto"}},
                             BASES, template, default_seed=42)
    assert spec.hyperparameters == {"n_epochs": template["train"]["epochs"], "batch_size":
                                    template["train"]["micro_batch_size"], "learning_rate_multiplier": 2.5}
    job = {"training_file": "file-a", "validation_file": "file-b", "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": spec.seed}
    run = build_run_config(job, template, "/models/base", tmp_path / "files", tmp_path / "out")
    cfg = config_from_dict(run)
    assert cfg.model.name == "/models/base" and cfg.task == "sft" and cfg.output_dir == str(tmp_path / "out")
    assert cfg.data.train == str(tmp_path / "files" / "file-a.jsonl")
    assert cfg.data.validation == str(tmp_path / "files" / "file-b.jsonl")
    assert cfg.train.learning_rate == pytest.approx(2.5 * template["train"]["learning_rate"])
    assert cfg.train.seed == 42 and cfg.train.save_every == template["train"]["save_every"]
    assert type(cfg.method).method == "lora"


def test_nested_method_hyperparameters_and_adapter_choice(template, tmp_path):
    spec = parse_job_request({"model": "/models/base", "training_file": "file-x", "seed": 7, "method": {
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3, "batch_size": 2}},
        "adapter": {"name": "dora", "r": 4}}}, BASES, template, default_seed=42)
    assert spec.hyperparameters["beta"] == 0.3 and spec.hyperparameters["batch_size"] == 2 and spec.seed == 7
    assert spec.method["adapter"]["name"] == "dora" and spec.method["adapter"]["r"] == 4
    job = {"training_file": "file-a", "validation_file": None, "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": spec.seed}
    run = build_run_config(job, template, "base", tmp_path, tmp_path / "out")
    assert run["task"] == {"name": "dpo", "beta": 0.3} and run["method"]["name"] == "dora"
    assert run["data"]["validation"] is None and run["train"]["micro_batch_size"] == 2


@pytest.mark.parametrize("body, key", [
    ({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 3}}}}, "method.supervised.hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 1.5}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),  # beta is for dpo only
    ({"method": {"type": "supervised", "extra": 1}}, "method.extra"),
    ({"method": {"type": "supervised", "adapter": {"name": "lora", "rank": 8}}}, "method.adapter.rank"),
    ({"seed": -1}, "seed"),
])
def test_bad_requests_name_their_parameter(template, body, key):
    with pytest.raises(JobRequestError) as info:
        parse_job_request({"model": "base", "training_file": "file-x", **body}, BASES, template, 42)
    assert info.value.key == key


def test_fine_tuned_names_follow_openai():
    assert fine_tuned_name("base", "demo", "ftjob-" + "a" * 24) == "ft:base:demo:" + "a" * 24
    assert fine_tuned_name("base", None, "ftjob-" + "b" * 24) == "ft:base::" + "b" * 24


def test_store_persists_in_wal_mode_and_status_changes_are_conditional(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    file_id, job_id = new_id("file"), new_id("ftjob")
    store.add_file(file_id, "t.jsonl", "fine-tune", 10, 2)
    store.add_job({"id": job_id, "model": "base", "training_file": file_id, "validation_file": None,
                   "suffix": None, "method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 1},
                   "seed": 1, "metadata": {"team": "x"}, "status": "queued"})
    store.add_event(job_id, "first")
    store.add_event(job_id, "second", data={"step": 1})
    assert store.update_job(job_id, when=("queued", "running"), status="cancelled")
    assert not store.update_job(job_id, when=("running",), status="succeeded")  # cancelled stays cancelled

    again = Store(tmp_path / "db.sqlite")  # a restarted server
    job = again.get_job(job_id)
    assert job["status"] == "cancelled" and job["metadata"] == {"team": "x"} and job["method"]["type"] == "supervised"
    assert [e["message"] for e in again.list_events(job_id)] == ["second", "first"]
    assert again.get_file(file_id)["records"] == 2 and again.jobs_using_file(file_id) == []
    assert again.get_file("../etc/passwd") is None and again.get_job("ftjob-nope") is None
    mode = sqlite3.connect(tmp_path / "db.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_serving_code_names_no_method():
    """Architecture rule: serve/ reaches methods through the registry and class facts only."""
    from pathlib import Path

    import tuneforge.serve
    from tuneforge.registry import METHODS
    from tests.train.test_api import _method_mentions

    root = Path(tuneforge.serve.__file__).parent
    for path in [*root.glob("*.py"), root.parent / "cli" / "serve.py"]:
        named = _method_mentions(path.read_text(), set(METHODS.names()))
        assert not named, f"{path} names methods {sorted(named)}"

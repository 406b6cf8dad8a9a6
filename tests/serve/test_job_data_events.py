"""A finished job's events say how many of its training examples were dropped or truncated (the worker's
result carries train()'s data report): a warning above data.warn_dropped_share, information below it."""
from __future__ import annotations

import json

from tuneforge.serve.jobs import JobManager
from tuneforge.serve.store import Store, new_id


def finished_job(tmp_path, data: dict) -> tuple[JobManager, str]:
    store = Store(tmp_path / "db.sqlite")
    job_id = new_id("ftjob")
    store.add_job({"id": job_id, "model": "base", "training_file": new_id("file"), "validation_file": None,
                   "suffix": "s", "method": {"type": "supervised"}, "hyperparameters": {}, "seed": 1,
                   "status": "running", "attempts": 1})
    jobs = JobManager(store, tmp_path, "base")
    (jobs.job_dir(job_id) / "output" / "adapter").mkdir(parents=True)
    (jobs.job_dir(job_id) / "run.json").write_text(json.dumps({"data": {"warn_dropped_share": 0.05}}))
    (jobs.job_dir(job_id) / "result.json").write_text(json.dumps({"status": "succeeded", "data": data}))
    return jobs, job_id


def entry(records, dropped, truncated):
    return {"records": records, "examples": records - dropped, "dropped": dropped, "truncated": truncated,
            "dropped_share": dropped / records, "truncated_share": truncated / records}


def test_dropped_examples_become_job_events(tmp_path):
    jobs, job_id = finished_job(tmp_path, {"train": entry(400, 63, 70), "validation": entry(40, 1, 1)})
    jobs._finish(job_id, 0)
    events = {e["message"]: e for e in jobs.store.list_events(job_id)}
    train = events["63 of 400 training examples (15.8%) were dropped (nothing left to train within the token "
                   "limit); 70 (17.5%) were truncated."]
    assert train["level"] == "warn"
    assert train["data"] == {**entry(400, 63, 70), "split": "train"}
    valid = events["1 of 40 validation examples (2.5%) were dropped (nothing left to train within the token "
                   "limit); 1 (2.5%) were truncated."]
    assert valid["level"] == "info"
    assert jobs.store.get_job(job_id)["status"] == "succeeded"

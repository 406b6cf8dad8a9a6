"""The job manager's bookkeeping without training: what a restarted server does with jobs it finds running,
and how often a job may lose its worker before it fails."""
from __future__ import annotations

import json

import pytest

from tuneforge.serve.jobs import JobManager
from tuneforge.serve.store import Store, new_id


@pytest.fixture
def manager(tmp_path):
    def make(max_restarts: int = 2, status: str = "running") -> tuple[JobManager, str]:
        store = Store(tmp_path / "db.sqlite")
        job_id = new_id("ftjob")
        store.add_job({"id": job_id, "model": "base", "training_file": new_id("file"), "validation_file": None,
                       "suffix": "s", "method": {"type": "supervised"}, "hyperparameters": {}, "seed": 1,
                       "status": status, "attempts": 1})
        return JobManager(store, tmp_path, "base", max_restarts=max_restarts), job_id
    return make


def _complete_checkpoint(step) -> None:
    """The files a resume needs to take a directory for a checkpoint (train/checkpoint.py `damage`)."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(step / "trainable.safetensors"))
    (step / "scheduler.pt").write_bytes(b"")
    (step / "state.json").write_text(json.dumps({"global_step": int(step.name.split("-")[1])}))


def messages(store: Store, job_id: str) -> list[str]:
    return [e["message"] for e in reversed(store.list_events(job_id))]


def test_a_job_found_running_resumes_from_its_checkpoint(manager):
    jobs, job_id = manager()
    step = jobs.job_dir(job_id) / "output" / "checkpoints" / "step-4"
    step.mkdir(parents=True)
    _complete_checkpoint(step)
    (step.parent / "step-6").mkdir()  # damaged (empty): a resume skips it
    jobs._recover()
    job = jobs.store.get_job(job_id)
    assert job["status"] == "queued" and job["restarts"] == 1
    assert messages(jobs.store, job_id) == [
        "The server restarted while this job was running; it will resume from checkpoint step-4."]


def test_a_job_is_queued_only_once_its_run_config_is_written(manager):
    jobs, job_id = manager(status="validating_files")
    assert jobs.store.list_jobs(("queued",)) == []  # the scheduler cannot pick it up yet
    jobs.submit(job_id, {"train": {"max_steps": 1}})
    assert json.loads((jobs.job_dir(job_id) / "run.json").read_text()) == {"train": {"max_steps": 1}}
    assert jobs.store.get_job(job_id)["status"] == "queued"
    assert messages(jobs.store, job_id) == ["Validated the training file; the job is queued."]


def test_a_job_whose_server_stopped_before_its_run_config_was_written_fails(manager):
    jobs, job_id = manager(status="validating_files")
    jobs._recover()
    job = jobs.store.get_job(job_id)
    assert job["status"] == "failed" and "create the job again" in job["error"]["message"]


def test_a_job_that_lost_its_worker_too_often_fails(manager):
    jobs, job_id = manager(max_restarts=0)
    jobs._recover()
    job = jobs.store.get_job(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_died"


def test_a_worker_that_finished_while_no_server_watched_is_taken_as_finished(manager):
    jobs, job_id = manager()
    (jobs.job_dir(job_id) / "output" / "adapter").mkdir(parents=True)
    (jobs.job_dir(job_id) / "result.json").write_text(json.dumps({"status": "succeeded", "trained_tokens": 9}))
    jobs._recover()
    job = jobs.store.get_job(job_id)
    name = f"ft:base:s:{job_id.split('-', 1)[1]}"
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == name and job["trained_tokens"] == 9
    assert jobs.store.get_model(name)["adapter_dir"] == f"jobs/{job_id}/output/adapter"


def test_a_failed_worker_result_fails_the_job_with_its_error(manager):
    jobs, job_id = manager()
    error = {"code": "invalid_training_file", "message": "file-x:3: bad", "param": "training_file"}
    (jobs.job_dir(job_id)).mkdir(parents=True)
    (jobs.job_dir(job_id) / "result.json").write_text(json.dumps({"status": "failed", "error": error}))
    jobs._recover()
    job = jobs.store.get_job(job_id)
    assert job["status"] == "failed" and job["error"] == error
    assert messages(jobs.store, job_id)[-1] == "Fine-tuning job failed: file-x:3: bad"


def test_worker_errors_name_the_client_file_not_our_path(tmp_path):
    from tuneforge.errors import ConfigError, DataError
    from tuneforge.serve.worker import error_result

    train, valid = str(tmp_path / "files" / "file-aaa.jsonl"), str(tmp_path / "files" / "file-bbb.jsonl")
    run = {"data": {"train": train, "validation": valid}}
    bad = error_result(DataError("missing field 'chosen'", file=valid, line=7), run)
    assert bad == {"code": "invalid_validation_file", "param": "validation_file",
                   "message": "file-bbb:7: missing field 'chosen'"}
    assert error_result(ConfigError("beta must be positive", key="beta"), run)["code"] == "invalid_request"
    crash = error_result(RuntimeError(f"boom in {train}"), run)
    assert crash == {"code": "server_error", "param": None, "message": "RuntimeError: boom in file-aaa"}

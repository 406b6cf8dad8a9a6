"""OpenAI's job `integrations`: a W&B integration becomes train.report_to/train.wandb of the job's run (offline
unless the server set W&B up), any other type is a 400 naming it, and the job object shows what was asked."""
from __future__ import annotations

import openai
import pytest

from tuneforge.config import config_from_dict
from tuneforge.serve.config import ServeConfig
from tuneforge.serve.jobspec import JobRequestError, build_run_config, load_template, parse_job_request

from .conftest import chat_records, running_server, wait_for_job, write_jsonl

BASES = ("base",)
WANDB = {"type": "wandb", "wandb": {"project": "tf-jobs", "name": "first", "tags": ["a", "b"], "entity": None}}


@pytest.fixture(scope="module")
def template():
    return load_template(None)


def test_wandb_integration_maps_onto_the_run_config(template, tmp_path):
    spec = parse_job_request({"model": "base", "training_file": "file-x", "integrations": [WANDB]}, BASES, template, 1)
    assert spec.integrations == [WANDB]
    job = {"training_file": "file-a", "validation_file": None, "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": 1, "integrations": spec.integrations}
    cfg = config_from_dict(build_run_config(job, template, "base", tmp_path, tmp_path / "out"))
    assert cfg.train.report_to == ["wandb"]
    assert (cfg.train.wandb.project, cfg.train.wandb.name, cfg.train.wandb.tags) == ("tf-jobs", "first", ["a", "b"])
    assert cfg.train.wandb.mode is None  # WANDB_MODE / WANDB_API_KEY of the server decide, else offline
    plain = dict(job, integrations=[])
    assert config_from_dict(build_run_config(plain, template, "base", tmp_path, tmp_path / "o")).train.report_to == []


@pytest.mark.parametrize("integrations, key, message", [
    ([{"type": "neptune", "neptune": {}}], "integrations.0.type", "integration type 'neptune' is not supported"),
    ([{"wandb": {"project": "x"}}], "integrations.0.type", "integration type None is not supported"),
    ("wandb", "integrations", "must be a list"),
    ([{"type": "wandb", "wandb": {}}], "integrations.0.wandb.project", "needs wandb.project"),
    ([{"type": "wandb", "wandb": {"project": "x", "team": "y"}}], "integrations.0.wandb.team", "unknown wandb field"),
    ([{"type": "wandb", "wandb": {"project": "x", "tags": "t"}}], "integrations.0.wandb.tags", "list of strings"),
    ([WANDB, WANDB], "integrations.1", "at most one"),
])
def test_unsupported_or_malformed_integrations_are_refused(template, integrations, key, message):
    with pytest.raises(JobRequestError, match=message) as info:
        parse_job_request({"model": "base", "training_file": "f", "integrations": integrations}, BASES, template, 1)
    assert info.value.key == key


def test_jobs_with_integrations_over_http(served_dir, tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = ServeConfig(base=str(served_dir / "base"), data_dir=str(served_dir / "data-integrations"),
                         job_config=str(served_dir / "job.yaml"), api_keys=["k"], batch_wait_ms=20)
    with running_server(config) as url:
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=120)
        upload = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_records(4)).open("rb"),
                                     purpose="fine-tune")
        with pytest.raises(openai.BadRequestError) as info:
            client.fine_tuning.jobs.create(model="base", training_file=upload.id,
                                           integrations=[{"type": "neptune", "neptune": {"project": "p"}}])
        assert info.value.body["param"] == "integrations.0.type" and "'neptune'" in info.value.body["message"]
        job = client.fine_tuning.jobs.create(
            model="base", training_file=upload.id, integrations=[WANDB],
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}})
        assert job.integrations[0].type == "wandb" and job.integrations[0].wandb.project == "tf-jobs"
        job = wait_for_job(client, job.id)
        assert job.status == "succeeded", job.error
        assert client.fine_tuning.jobs.retrieve(job.id).integrations[0].wandb.tags == ["a", "b"]
    output = served_dir / "data-integrations" / "jobs" / job.id / "output"
    assert len(list((output / "wandb").glob("offline-run-*"))) == 1

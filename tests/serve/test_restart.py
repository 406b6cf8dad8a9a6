"""Nothing is lost when a worker or the whole server dies mid-job: the job resumes from its last checkpoint
(the trainer resumes exactly), finished jobs and their models stay listed, and each step is reported once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tuneforge.serve import ServeConfig

from .conftest import chat_records, free_port, running_server, wait_for_job, write_jsonl


def wait_for_checkpoint(data_dir, job_id: str, timeout: float = 120) -> None:
    root = data_dir / "jobs" / job_id / "output" / "checkpoints"
    deadline = time.monotonic() + timeout
    while not (root.is_dir() and any(p.name.startswith("step-") for p in root.iterdir())):
        if time.monotonic() > deadline:
            raise TimeoutError("no checkpoint was written")
        time.sleep(0.05)


def step_events(client, job_id: str) -> list[int]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return sorted(e.data["step"] for e in events if e.type == "metrics")


def long_job(client, tmp_path, epochs: int = 25):
    upload = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_records(8)).open("rb"),
                                 purpose="fine-tune")
    return client.fine_tuning.jobs.create(model="base", training_file=upload.id, hyperparameters={"n_epochs": epochs})


def test_a_killed_worker_resumes_from_its_last_checkpoint(served_dir, tmp_path):
    data_dir = tmp_path / "data"
    config = ServeConfig(base=str(served_dir / "base"), data_dir=str(data_dir),
                         job_config=str(served_dir / "job.yaml"))
    with running_server(config) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        job = long_job(client, tmp_path)
        wait_for_checkpoint(data_dir, job.id)
        pid = int((data_dir / "jobs" / job.id / "worker.lock").read_text())
        os.kill(pid, signal.SIGKILL)
        job = wait_for_job(client, job.id)
        assert job.status == "succeeded", job.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
        assert any("stopped unexpectedly (signal 9)" in m for m in messages)
        resumed = [m for m in messages if m.startswith("Fine-tuning resumed from checkpoint step-")]
        assert resumed and "(attempt 2)" in resumed[0]
        assert step_events(client, job.id) == list(range(1, 4 * 25 + 1))  # every step reported exactly once


def start_server(served_dir, data_dir, log_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "tuneforge", "serve", "--base", str(served_dir / "base"), "--data-dir",
           str(data_dir), "--job-config", str(served_dir / "job.yaml"), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)


@pytest.fixture
def servers():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_server_restart_loses_nothing_and_resumes_the_running_job(served_dir, tmp_path, servers):
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    proc, url = start_server(served_dir, data_dir, log)
    servers.append(proc)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    upload = client.files.create(file=write_jsonl(tmp_path / "a.jsonl", chat_records(4)).open("rb"),
                                 purpose="fine-tune")
    done = wait_for_job(client, client.fine_tuning.jobs.create(model="base", training_file=upload.id,
                                                               hyperparameters={"n_epochs": 1}).id)
    assert done.status == "succeeded"
    running = long_job(client, tmp_path)
    wait_for_checkpoint(data_dir, running.id)
    proc.kill()  # no shutdown of any kind: the worker notices its server is gone and stops at a checkpoint
    proc.wait(30)

    proc, url = start_server(served_dir, data_dir, log)
    servers.append(proc)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    assert client.fine_tuning.jobs.retrieve(done.id).status == "succeeded"
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    assert upload.id in [f.id for f in client.files.list()]
    job = wait_for_job(client, running.id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any(m.startswith("The server restarted while this job was running; it will resume from checkpoint")
               for m in messages)
    assert step_events(client, job.id) == list(range(1, 4 * 25 + 1))
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                           messages=[{"role": "user", "content": "say cat"}])
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_clean_shutdown_queues_the_running_job_for_the_next_start(served_dir, tmp_path):
    data_dir = tmp_path / "data"
    config = ServeConfig(base=str(served_dir / "base"), data_dir=str(data_dir),
                         job_config=str(served_dir / "job.yaml"))
    with running_server(config) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        job = long_job(client, tmp_path)
        wait_for_checkpoint(data_dir, job.id)
    with running_server(config) as url:  # the same data directory, a new server
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
        assert any(m.startswith("The server shut down; the job will resume from checkpoint step-") for m in messages)
        job = wait_for_job(client, job.id)
        assert job.status == "succeeded", job.error
        assert step_events(client, job.id) == list(range(1, 4 * 25 + 1))

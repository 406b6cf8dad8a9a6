"""Serving tests: a tiny Llama saved as a local model directory is the base, tiny LoRA adapters with random
(non-identity) weights are the fine-tunes, and servers listen on 127.0.0.1 only."""
from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

ADAPTER_TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models gain nothing from intra-op threads on a shared 2-core machine; workers inherit the setting."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_adapter(out_dir: Path, seed: int) -> Path:
    """A LoRA adapter for tiny_llama(seed=0) whose A and B are both random, so it really changes the output."""
    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter
    from tuneforge.models import tiny_llama

    model = tiny_llama()
    torch.manual_seed(seed)
    add_adapter(model, "lora", r=4, lora_alpha=32, target_modules=ADAPTER_TARGETS, init_lora_weights=False)
    return save_adapter(model, out_dir, base_model_name="tiny-llama")


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory) -> Path:
    """tiny base + three adapters + a job template whose jobs train in a few steps and checkpoint every step."""
    from tuneforge.models import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("serve")
    tiny_llama().save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    for seed, name in enumerate(("alpha", "beta", "gamma"), start=1):
        make_adapter(root / "adapters" / name, seed)
    template = {"method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
                "data": {"max_length": 64, "packing": False},
                "train": {"epochs": 2, "micro_batch_size": 2, "learning_rate": 0.02, "save_every": 1,
                          "keep_last": 2, "lr_schedule": "constant"}}
    (root / "job.yaml").write_text(yaml.safe_dump(template))
    return root


def chat_records(n: int = 6) -> list[dict]:
    words = ["cat", "dog", "sun", "moon", "tree", "rain", "fish", "star"]
    return [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
            for w in (words * 4)[:n]]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(config, apps: list | None = None):
    """The app under uvicorn in a thread, on 127.0.0.1; yields the base URL of the API (and appends the app to
    `apps`, for tests that look at the server's state)."""
    import uvicorn

    from tuneforge.serve import create_app

    config.host, config.port = "127.0.0.1", free_port()
    app = create_app(config)
    if apps is not None:
        apps.append(app)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=120)


def wait_for_job(client, job_id: str, timeout: float = 300, until=("succeeded", "failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
        time.sleep(0.2)

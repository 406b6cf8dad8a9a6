"""The /v1 routes the web console reads (metrics, resolved config, model card, file preview) and the console's
static files, without a browser: the numbers each route gives are checked against their sources."""
from __future__ import annotations

import json
import math
import re
import time
from importlib.resources import files

import httpx
import pytest
from safetensors import safe_open

from tuneforge.models import tiny_llama
from tuneforge.serve import ServeConfig
from tuneforge.serve.routes_details import PREVIEW_CHARS

from ..conftest import ADAPTER_TARGETS, chat_records, running_server, write_jsonl

KEY = "console-key"


@pytest.fixture(scope="module")
def api(served_dir):
    config = ServeConfig(base=str(served_dir / "base"), adapters=[str(served_dir / "adapters")],
                         data_dir=str(served_dir / "console-data"), job_config=str(served_dir / "job.yaml"),
                         api_keys=[KEY])
    with running_server(config) as url:
        yield httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


def upload(api, path, name=None) -> dict:
    with open(path, "rb") as handle:
        response = api.post("/files", data={"purpose": "fine-tune"}, files={"file": (name or path.name, handle)})
    response.raise_for_status()
    return response.json()


def lora_parameters(r: int, targets) -> int:
    """r x (in + out) for each targeted Linear of the tiny base: what a LoRA adapter holds."""
    return sum(r * (m.in_features + m.out_features) for name, m in tiny_llama().named_modules()
               if name.rsplit(".", 1)[-1] in targets)


@pytest.fixture(scope="module")
def finished_job(api, served_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("job")
    train = upload(api, write_jsonl(folder / "train.jsonl", chat_records(4)))
    valid = upload(api, write_jsonl(folder / "valid.jsonl", chat_records(2)))
    body = {"model": "base", "training_file": train["id"], "validation_file": valid["id"], "suffix": "card",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}}}
    job = api.post("/fine_tuning/jobs", json=body).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        job = api.get(f"/fine_tuning/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    return job, train, valid


def test_metrics_are_the_jobs_metric_events_oldest_first(api, finished_job):
    job = finished_job[0]
    points = api.get(f"/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
    events = api.get(f"/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert points == [e["data"] for e in reversed(events) if e["type"] == "metrics"]
    later = api.get(f"/fine_tuning/jobs/{job['id']}/metrics", params={"offset": 1}).json()
    assert later["data"] == points[1:] and later["total"] == len(points)  # a poller gets only what is new
    train = [p for p in points if "train_loss" in p]
    assert [p["step"] for p in train] == [1, 2]  # 4 records / batch 2 x 1 epoch
    assert all(math.isfinite(p["train_loss"]) for p in train)
    assert [p["step"] for p in points if "valid_loss" in p] == [2]  # no eval_every: the final evaluation only
    assert api.get("/fine_tuning/jobs/ftjob-000000000000000000000000/metrics").status_code == 404


def test_config_is_the_resolved_run_config_with_paths_inside_the_data_dir(api, finished_job):
    job, train, valid = finished_job
    body = api.get(f"/fine_tuning/jobs/{job['id']}/config").json()
    config = body["config"]
    assert body["fine_tuning_job_id"] == job["id"]
    assert config["data"]["train"] == f"files/{train['id']}.jsonl"
    assert config["data"]["validation"] == f"files/{valid['id']}.jsonl"
    assert config["output_dir"] == f"jobs/{job['id']}/output"
    assert config["method"]["name"] == "lora" and config["method"]["r"] == 4  # the job template's
    assert config["train"]["epochs"] == 1 and config["train"]["micro_batch_size"] == 2
    assert "weight_decay" in config["train"]  # a default the template did not name: resolved


def test_model_cards(api, finished_job, served_dir):
    job, train, valid = finished_job
    card = api.get(f"/models/{job['fine_tuned_model']}/card").json()
    assert card["kind"] == "fine-tuned" and card["fine_tuning_job_id"] == job["id"]
    assert card["method"]["name"] == "lora" and card["method"]["r"] == 4
    assert card["trainable_parameters"] == lora_parameters(4, ("q_proj", "v_proj"))
    assert card["data"] == [
        {"role": "training_file", "file_id": train["id"], "filename": "train.jsonl", "records": 4},
        {"role": "validation_file", "file_id": valid["id"], "filename": "valid.jsonl", "records": 2}]
    assert card["steps"] == 2 and math.isfinite(card["metrics"]["train_loss"])
    assert math.isfinite(card["metrics"]["eval_loss"])

    alpha = api.get("/models/alpha/card").json()
    assert alpha["kind"] == "adapter" and alpha["method"]["name"] == "lora" and alpha["method"]["r"] == 4
    assert alpha["trainable_parameters"] == lora_parameters(4, ADAPTER_TARGETS)
    with safe_open(str(served_dir / "adapters" / "alpha" / "adapter_model.safetensors"), "pt") as handle:
        assert alpha["trainable_parameters"] == sum(handle.get_tensor(k).numel() for k in handle.keys())

    base = api.get("/models/base/card").json()
    assert base["kind"] == "base" and base["parameters"] == sum(p.numel() for p in tiny_llama().parameters())
    assert base["context_tokens"] == tiny_llama().config.max_position_embeddings
    assert api.get("/models/nope/card").status_code == 404
    assert api.get(f"/models/{job['fine_tuned_model']}").json()["id"] == job["fine_tuned_model"]  # still routed


def test_preview_shows_the_first_records_cut_to_a_bound(api, tmp_path):
    long_record = {"messages": [{"role": "user", "content": "x" * (3 * PREVIEW_CHARS)},
                                {"role": "assistant", "content": "y"}]}
    records = [long_record, *chat_records(5)]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(records[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in records[1:]))
    stored = upload(api, path)
    assert stored["records"] == 6  # the blank line is no record
    preview = api.get(f"/files/{stored['id']}/preview", params={"limit": 3}).json()
    assert preview["records"] == 6 and preview["bytes"] == path.stat().st_size
    assert [len(r["text"]) for r in preview["preview"]][0] == PREVIEW_CHARS
    assert [r["truncated"] for r in preview["preview"]] == [True, False, False]
    assert [json.loads(r["text"]) for r in preview["preview"][1:]] == records[1:3]
    assert api.get("/files/file-000000000000000000000000/preview").status_code == 404


def test_the_console_page_needs_no_key_and_the_data_does(api):
    root = str(api.base_url).removesuffix("/v1/").removesuffix("/v1")
    page = httpx.get(root + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    for name in re.findall(r'(?:src|href)="/console/([^"]+)"', page.text):
        assert httpx.get(f"{root}/console/{name}").status_code == 200
    for bad in ("nope.js", "..%2Fapp.py", "%2E%2E%2Fapp.py"):
        assert httpx.get(f"{root}/console/{bad}").status_code == 404
    for path in ("/v1/fine_tuning/jobs/x/metrics", "/v1/models/base/card", "/v1/files/x/preview"):
        assert httpx.get(root + path).status_code == 401


def test_the_forms_methods_can_all_share_the_served_base():
    from tuneforge.serve.pool import check_servable

    script = files("tuneforge.serve").joinpath("console", "console.js").read_text()
    methods = json.loads(re.search(r"const METHODS = (\[.*?\]);", script).group(1))
    assert methods[0] == "" and len(methods) > 1
    for name in methods[1:]:
        check_servable(name)

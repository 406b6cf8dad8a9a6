"""Details a person looking at the server wants and OpenAI's API lacks: a job's loss curve and resolved config, a
model's card, the first records of a file. Documented /v1 routes under the same key as the rest (the web console
uses only these and the OpenAI routes, so any client can show what it shows).

    GET /v1/fine_tuning/jobs/{id}/metrics   the job's metric points, oldest first (train_loss, valid_loss, ...)
    GET /v1/fine_tuning/jobs/{id}/config    the run config the job trains with, every default filled in
    GET /v1/models/{id}/card                method, trainable parameters, data, final metrics of a model
    GET /v1/files/{id}/preview              line count and the first records (each cut at PREVIEW_CHARS)
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Query, Request

from .http_errors import ApiError

router = APIRouter()
PREVIEW_CHARS = 4000  # one record's text in a preview; a 1 MB line is shown cut, not sent whole


def _state(request: Request):
    return request.app.state.server


def _job(state, job_id: str) -> dict:
    job = state.store.get_job(job_id)
    if job is None:
        raise ApiError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return job


# ---- jobs -----------------------------------------------------------------------------------------------
@router.get("/fine_tuning/jobs/{job_id}/metrics")
def job_metrics(request: Request, job_id: str, offset: int = Query(0, ge=0)) -> dict:
    """The job's `metrics` events as points, oldest first: what a loss curve plots. Each is recorded once per
    step (a resumed run does not repeat steps) and only ever appended, so a client polling a running job asks
    for `offset` = the points it has and receives only the new ones."""
    state = _state(request)
    job = _job(state, job_id)
    points = [e["data"] for e in reversed(state.store.list_events(job["id"]))
              if e["type"] == "metrics" and isinstance(e["data"], dict)]
    return {"object": "list", "data": points[offset:], "offset": offset, "total": len(points), "has_more": False}


@router.get("/fine_tuning/jobs/{job_id}/config")
def job_config(request: Request, job_id: str) -> dict:
    """The resolved run config (template + the job's choices + every default). Paths inside the data directory
    are shown relative to it (files/<file id>.jsonl, jobs/<job id>/output), not as the server's absolute paths."""
    from ..config import config_from_dict
    from ..config.loader import dump_config

    state = _state(request)
    job = _job(state, job_id)
    path = state.jobs.job_dir(job["id"]) / "run.json"
    if not path.is_file():
        raise ApiError(404, f"job {job_id} has no run config yet", param="fine_tuning_job_id",
                       code="config_not_found")
    resolved = dump_config(config_from_dict(json.loads(path.read_text())))
    return {"object": "fine_tuning.job.config", "fine_tuning_job_id": job["id"],
            "config": _relative(resolved, str(state.data_dir))}


def _relative(value, root: str):
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and value.startswith(root + "/"):
        return value[len(root) + 1:]
    return value


# ---- models ---------------------------------------------------------------------------------------------
@router.get("/models/{model_id:path}/card")
def model_card(request: Request, model_id: str) -> dict:
    """Model-card fields: for the base its size and context; for an adapter or fine-tune its method and settings,
    trainable parameters (counted from the weights file's header), task, data, steps and final metrics (from the
    README.md card training wrote); a fine-tune's data are named by the uploaded files it trained on."""
    from ..io.model_card import read_facts
    from .pool import CheckpointRef

    state = _state(request)
    key, adapter = state.resolve_model(model_id)  # 404 for unknown ids
    if key is None:
        return {"id": state.base_name, "object": "model.card", "kind": "base", "base_model": state.config.base,
                "parameters": _base_parameters(state), "context_tokens": state.context_tokens}
    row = state.store.get_model(model_id)
    folder = adapter.path if isinstance(adapter, CheckpointRef) else adapter
    facts = (read_facts(folder) if not isinstance(adapter, CheckpointRef) else None) or {}
    card = {"id": model_id, "object": "model.card",
            "kind": "checkpoint" if isinstance(adapter, CheckpointRef) else "fine-tuned" if row else "adapter",
            "base_model": state.base_name, "method": facts.get("method") or _method_of(adapter),
            "trainable_parameters": _tensor_elements(folder), "task": facts.get("task"),
            "hyperparameters": facts.get("hyperparameters"), "steps": facts.get("steps"),
            "training_time_s": facts.get("training_time_s"), "metrics": facts.get("metrics") or {},
            "data": [{"name": d.get("name"), "license": d.get("license")} for d in facts.get("data") or []],
            "fine_tuning_job_id": row["job_id"] if row else None}
    job = state.store.get_job(row["job_id"]) if row and row["job_id"] else None
    if job is not None:  # the card names the server's file paths; the uploads' ids and names say more
        card["data"] = [_file_ref(state, job[k], k) for k in ("training_file", "validation_file") if job[k]]
    return card


def _base_parameters(state) -> int:
    if getattr(state, "_base_parameters", None) is None:
        state._base_parameters = sum(p.numel() for p in state.model.parameters())
    return state._base_parameters


def _method_of(adapter) -> dict | None:
    from .pool import CheckpointRef

    if isinstance(adapter, CheckpointRef):
        return dict(adapter.method)
    try:
        return json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _tensor_elements(folder) -> int | None:
    """Elements of every tensor in the folder's safetensors weights, from the header alone (no tensor is read)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def _file_ref(state, file_id: str, role: str) -> dict:
    row = state.store.get_file(file_id)
    return {"role": role, "file_id": file_id, "filename": row["filename"] if row else None,
            "records": row["records"] if row else None}


# ---- files ----------------------------------------------------------------------------------------------
@router.get("/files/{file_id}/preview")
def file_preview(request: Request, file_id: str, limit: int = Query(5, ge=1, le=100)) -> dict:
    """Size, line count and the first `limit` records as text (each cut at PREVIEW_CHARS characters)."""
    state = _state(request)
    row = state.store.get_file(file_id)
    if row is None:
        raise ApiError(404, f"No such File object: {file_id}", param="file_id", code="file_not_found")
    records = []
    with open(state.data_dir / "files" / f"{row['id']}.jsonl", encoding="utf-8", errors="replace") as handle:
        while len(records) < limit:
            text = handle.readline(PREVIEW_CHARS + 1)
            if not text:
                break
            cut = len(text.rstrip("\n")) > PREVIEW_CHARS
            rest = text
            while cut and rest and not rest.endswith("\n"):  # skip the rest of a long line, a chunk at a time
                rest = handle.readline(1 << 20)
            if text.strip():
                records.append({"text": text.rstrip("\n")[:PREVIEW_CHARS], "truncated": cut})
    return {"id": row["id"], "object": "file.preview", "filename": row["filename"], "bytes": row["bytes"],
            "records": row["records"], "preview": records}

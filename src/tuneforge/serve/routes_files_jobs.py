"""Files and fine-tuning jobs: /v1/files and /v1/fine_tuning/jobs, as OpenAI's API has them.

Handlers that touch the disk or validate a file are plain `def` functions: FastAPI runs them in its thread
pool, so a large upload never blocks the event loop that streams replies.
"""
from __future__ import annotations

import os

from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from ..errors import ConfigError
from .http_errors import ApiError
from .schemas import checkpoint_object, event_object, file_object, job_object
from .store import ACTIVE_STATES, new_id
from .validation import FileValidationError, check_jsonl, check_records, safe_filename

router = APIRouter()
CHUNK = 1 << 20
PARTIAL_PREFIX = ".partial-"  # an upload being written; removed at server start (see remove_partial_uploads)


def remove_partial_uploads(files_dir, known_ids: set[str]) -> list[str]:
    """Files a killed server left behind: uploads still being written, and stored files whose row was never
    added. Called at start, under the data directory's lock; returns the names removed."""
    removed = []
    for path in files_dir.iterdir():
        stem = path.name.removesuffix(".jsonl")
        partial = path.name.startswith((PARTIAL_PREFIX, ".file-"))
        if path.is_file() and (partial or (path.suffix == ".jsonl" and stem.startswith("file-")
                                           and stem not in known_ids)):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _state(request: Request):
    return request.app.state.server


def _page(items: list[dict], after: str | None, limit: int) -> dict:
    """OpenAI's cursor page: the items after the one with id `after`, at most `limit`."""
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


# ---- files ----------------------------------------------------------------------------------------------
@router.post("/files")
def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> dict:
    state = _state(request)
    if purpose != "fine-tune":
        raise ApiError(400, f"purpose {purpose!r} is not supported; this server takes 'fine-tune' files",
                       param="purpose")
    filename = safe_filename(file.filename)
    file_id = new_id("file")
    files_dir = state.data_dir / "files"
    tmp = files_dir / f"{PARTIAL_PREFIX}{file_id}.jsonl"  # never the client's name: ids and names are not paths
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                out.write(chunk)
        records = check_jsonl(tmp, filename)
        os.replace(tmp, files_dir / f"{file_id}.jsonl")
    except FileValidationError as err:
        raise ApiError(400, str(err), param="file", code="invalid_file") from None
    finally:
        tmp.unlink(missing_ok=True)
    return file_object(state.store.add_file(file_id, filename, purpose, size, records))


@router.get("/files")
def list_files(request: Request, purpose: str | None = None, after: str | None = None,
               limit: int = Query(10000, ge=1, le=10000)) -> dict:
    rows = [file_object(r) for r in _state(request).store.list_files() if purpose in (None, r["purpose"])]
    return _page(rows, after, limit)


def _file_row(request: Request, file_id: str) -> dict:
    row = _state(request).store.get_file(file_id)
    if row is None:
        raise ApiError(404, f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return row


@router.get("/files/{file_id}")
def get_file(request: Request, file_id: str) -> dict:
    return file_object(_file_row(request, file_id))


@router.get("/files/{file_id}/content")
def get_file_content(request: Request, file_id: str):
    row = _file_row(request, file_id)
    return FileResponse(_state(request).data_dir / "files" / f"{row['id']}.jsonl", media_type="application/jsonl")


@router.delete("/files/{file_id}")
def delete_file(request: Request, file_id: str) -> dict:
    state = _state(request)
    row = _file_row(request, file_id)
    users = state.store.jobs_using_file(row["id"])
    if users:
        raise ApiError(409, f"file {file_id} is used by the active job {users[0]['id']}; cancel it first",
                       param="file_id", code="file_in_use")
    state.store.delete_file(row["id"])
    (state.data_dir / "files" / f"{row['id']}.jsonl").unlink(missing_ok=True)
    return {"id": row["id"], "object": "file", "deleted": True}


# ---- jobs -----------------------------------------------------------------------------------------------
@router.post("/fine_tuning/jobs")
def create_job(request: Request, body: dict = Body(...)) -> dict:
    from ..config import config_from_dict
    from .jobspec import JobRequestError, build_run_config, parse_job_request

    state = _state(request)
    try:
        spec = parse_job_request(body, state.base_names, state.template, default_seed=42,
                                 allow_python_graders=state.config.allow_python_graders,
                                 max_epochs=state.config.max_job_epochs)
    except JobRequestError as err:
        raise ApiError(400, err.message, param=err.key) from None
    task = "sft" if spec.method["type"] == "supervised" else spec.method["type"]
    _check_adapter_fits(state, spec.method["adapter"])
    for param in ("training_file", "validation_file"):
        file_id = getattr(spec, param)
        if file_id is None and param == "validation_file":
            continue
        row = state.store.get_file(file_id) if isinstance(file_id, str) else None
        if row is None:
            raise ApiError(400, f"{param} {file_id!r} is not an uploaded file", param=param, code="invalid_file")
        try:
            check_records(state.data_dir / "files" / f"{row['id']}.jsonl", f"{param} {row['id']}", task,
                          state.template["data"].get("format", "auto"))
        except FileValidationError as err:
            raise ApiError(400, str(err), param=param, code=f"invalid_{param}") from None
        if param == "training_file":
            _check_token_budget(state, row["records"], spec.hyperparameters["n_epochs"])
    job_id = new_id("ftjob")
    job = {"id": job_id, "model": spec.model, "training_file": spec.training_file,
           "validation_file": spec.validation_file, "suffix": spec.suffix, "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": spec.seed, "metadata": body.get("metadata"),
           "integrations": spec.integrations}
    run = build_run_config(job, state.template, state.config.base, state.data_dir / "files",
                           state.jobs.job_dir(job_id) / "output", allow_pickle=state.config.allow_pickle)
    try:
        config_from_dict(run)
    except ConfigError as err:
        raise ApiError(400, f"the job's run config is invalid: {err}", param=None) from None
    created = state.store.add_job({**job, "status": "validating_files"})
    state.jobs.submit(job_id, run)
    # The job as created: a free worker may pick it up before this response is written.
    return job_object({**created, "status": "queued"})


def _check_token_budget(state, records: int, epochs: int) -> None:
    """400 when records x epochs x max_length (what the job can train on at most) exceeds max_job_tokens."""
    max_length = state.template["data"].get("max_length") or 0
    bound = records * epochs * max_length
    if max_length and bound > state.config.max_job_tokens:
        raise ApiError(400, f"this job could train on up to {bound:,} tokens ({records} records x {epochs} epochs x "
                            f"max_length {max_length}); this server allows {state.config.max_job_tokens:,} per job "
                            "(its max_job_tokens): use fewer epochs or a smaller file",
                       param="hyperparameters.n_epochs", code="job_too_large")


def _check_adapter_fits(state, section: dict) -> None:
    """Build the job's adapter on a weightless copy of the base (meta tensors: no memory, no compute), so fields
    that only the model can check (target_modules naming no layer...) fail now with 400, not later as a failed
    job. Errors that come from the meta tensors themselves (methods whose set-up reads the weights) are left to
    the worker."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..errors import TargetNotFound
    from ..methods import add_adapter, make_method_config

    fields = dict(section)
    name = fields.pop("name")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(state.model.config)
    try:
        add_adapter(skeleton, make_method_config(name, fields), "check")
    except TargetNotFound as err:
        key = "modules_to_save" if "modules_to_save" in str(err) else "target_modules"
        raise ApiError(400, str(err), param=f"method.adapter.{key}") from None
    except ConfigError as err:
        key = err.key if isinstance(err.key, str) else None
        raise ApiError(400, str(err), param=f"method.adapter.{key}" if key else "method.adapter") from None
    except Exception:  # noqa: BLE001 - meta tensors cannot run every set-up; the worker checks those
        return


def _job(request: Request, job_id: str) -> dict:
    job = _state(request).store.get_job(job_id)
    if job is None:
        raise ApiError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
    return job


@router.get("/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict:
    return _page([job_object(j) for j in _state(request).store.list_jobs()], after, limit)


@router.get("/fine_tuning/jobs/{job_id}")
def get_job(request: Request, job_id: str) -> dict:
    return job_object(_job(request, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str) -> dict:
    job = _job(request, job_id)
    if job["status"] not in ACTIVE_STATES or not _state(request).jobs.cancel(job["id"]):
        status = _state(request).store.get_job(job["id"])["status"]
        raise ApiError(400, f"job {job_id} is already {status}; only queued or running jobs can be cancelled",
                       param="fine_tuning_job_id", code="job_not_cancellable")
    return job_object(_job(request, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(request: Request, job_id: str, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)) -> dict:
    job = _job(request, job_id)
    return _page([event_object(e) for e in _state(request).store.list_events(job["id"])], after, limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, job_id: str, after: str | None = None,
                     limit: int = Query(10, ge=1, le=100)) -> dict:
    job = _job(request, job_id)
    found = [checkpoint_object(job, c) for c in _state(request).jobs.checkpoints(job["id"])]
    return _page(found, after, limit)


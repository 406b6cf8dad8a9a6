"""`create_app(config)`: the FastAPI application behind `tuneforge serve`, and `serve(config)` that runs it.

One process holds the web app, the base model with its adapter pool and the generation engine thread; jobs
train in worker processes (see jobs.py). Everything the server knows is in the data directory:

    <data>/tuneforge.db        SQLite (WAL): files, jobs, events, models
    <data>/files/<file id>.jsonl
    <data>/jobs/<job id>/      run.json, output/ (adapter, checkpoints, metrics), worker.log, result.json
    <data>/server.lock         held while a server uses the directory (two servers would race on jobs)
"""
from __future__ import annotations

import fcntl
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from ..errors import TuneforgeError
from .auth import BearerAuth
from .config import ServeConfig
from .http_errors import ApiError, BodySizeLimit, install_handlers

log = logging.getLogger("tuneforge.serve")
MB = 2**20
CHECKPOINT_ID = re.compile(r"^(?P<model>ft:.*:(?P<job>[0-9a-f]{24})):ckpt-step-(?P<step>\d+)$")


class ServerState:
    """What the routes share: config, store, jobs, model, pool, engine, and the names models are served by."""

    def __init__(self, config: ServeConfig):
        from .jobspec import load_template

        config.validate()
        self.config = config
        self.data_dir = config.data_path
        self.base_name = config.served_base_name()
        self.base_names = tuple(dict.fromkeys([self.base_name, config.base]))
        self.template = load_template(config.job_config)
        self.adapters = find_adapters(config.adapters, reserved=set(self.base_names), allow_pickle=config.allow_pickle)
        self.store = self.jobs = self.engine = self.pool = self.model = self.tokenizer = None
        self.context_tokens = self.max_prompt_chars = None
        self._lock_handle = None

    def open(self) -> None:
        from ..models import load_model, load_tokenizer
        from .engine import GenerationEngine
        from .jobs import JobManager
        from .pool import AdapterPool
        from .store import Store

        (self.data_dir / "files").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock_handle = open(self.data_dir / "server.lock", "a+")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuneforgeError(f"another tuneforge server is using {self.data_dir}") from None
        self.store = Store(self.data_dir / "tuneforge.db")
        from .routes_files_jobs import remove_partial_uploads

        removed = remove_partial_uploads(self.data_dir / "files", {row["id"] for row in self.store.list_files()})
        if removed:
            log.warning("removed %d partial upload(s) left by a server that stopped mid-upload", len(removed))
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        self.model = load_model(self.config.base, dtype=self.config.dtype, device=self.config.device,
                                allow_pickle=self.config.allow_pickle)
        self.tokenizer = load_tokenizer(self.config.base)
        self.context_tokens = getattr(self.model.config, "max_position_embeddings", None)
        self.max_prompt_chars = (self.context_tokens * longest_token_bytes(self.tokenizer)
                                 if self.context_tokens else None)
        self.pool = AdapterPool(self.model, int(self.config.adapter_cache_mb * MB), self.config.allow_pickle)
        self.engine = GenerationEngine(self.model, self.tokenizer, self.pool, self.config.max_batch_size,
                                       self.config.batch_wait_ms / 1000, self.config.max_queued_requests)
        self.engine.start()
        self.jobs = JobManager(self.store, self.data_dir, self.base_name, self.config.max_concurrent_jobs,
                               self.config.max_job_restarts,
                               on_model=lambda name: log.info("fine-tuned model ready: %s", name))
        self.jobs.start()

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()
        if self.engine is not None:
            self.engine.stop()
        if self._lock_handle is not None:
            self._lock_handle.close()

    def resolve_model(self, model_id: str):
        """(pool key, adapter dir or checkpoint) for a model id; (None, None) for the base. 404 for an unknown
        id. Checkpoints are `<fine-tuned model name>:ckpt-step-<N>`, as the checkpoints endpoint lists them."""
        from .jobs import fine_tuned_name
        from .pool import CheckpointRef

        if model_id in self.base_names:
            return None, None
        if model_id in self.adapters:
            return model_id, self.adapters[model_id]
        row = self.store.get_model(model_id)
        if row is not None:
            return model_id, self.data_dir / row["adapter_dir"]
        found = CHECKPOINT_ID.match(model_id)
        job = self.store.get_job(f"ftjob-{found['job']}") if found else None
        if job is not None and found["model"] == fine_tuned_name(self.base_name, job["suffix"], job["id"]):
            path = self.jobs.job_dir(job["id"]) / "output" / "checkpoints" / f"step-{int(found['step'])}"
            if (path / "trainable.safetensors").is_file():
                return model_id, CheckpointRef(path, dict(job["method"]["adapter"]))
        raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")


def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes one vocabulary entry (special tokens included) spells: every token stands for at most
    this many characters of text (byte-level and sentencepiece pieces spell their text in as many bytes or more),
    so a text longer than context x this cannot fit the context."""
    vocab = list(tokenizer.get_vocab()) + list(getattr(tokenizer, "all_special_tokens", []))
    return max((len(token.encode("utf-8")) for token in vocab), default=1) or 1


def find_adapters(paths: list[str], reserved: set[str], allow_pickle: bool = False) -> dict[str, Path]:
    """Adapter name -> directory for `--adapters`. Each path is an adapter folder, a training run's folder (its
    adapter/ inside), or a folder of either; an adapter is named after its folder (the run's, for a run). Each is
    validated here (config, method, weights file readable, no pickle unless allowed), so a broken adapter stops
    the start instead of failing its first request."""
    from ..io.adapter_files import check_adapter_files
    from .config import SERVED_NAME
    from .pool import check_servable, method_of

    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given).resolve()
        if not path.is_dir():
            raise TuneforgeError(f"--adapters {given}: not a directory")
        here = _adapter_in(path)
        children = sorted(child for child in path.iterdir() if child.is_dir())
        candidates = [(path.name, here)] if here else [(c.name, _adapter_in(c)) for c in children if _adapter_in(c)]
        if not candidates:
            raise TuneforgeError(f"--adapters {given}: no adapter (adapter_config.json) in it, its adapter/ folder "
                                 "or its subfolders")
        for name, adapter in candidates:
            try:
                check_adapter_files(adapter, allow_pickle=allow_pickle)
                check_servable(method_of(adapter))
            except TuneforgeError as err:
                raise TuneforgeError(f"--adapters {adapter}: {err}") from None
            if not SERVED_NAME.match(name) or name in reserved:
                raise TuneforgeError(f"--adapters {adapter}: {name!r} cannot be a model id (letters, digits, "
                                     f"'.', '_', '-'; not the base's name)")
            if name in found and found[name] != adapter:
                raise TuneforgeError(f"--adapters: two adapters are named {name!r} ({found[name]}, {adapter})")
            found[name] = adapter
    return found


def _adapter_in(folder: Path) -> Path | None:
    """The adapter folder of an adapter folder or of a training run's output folder."""
    from ..io.adapter_files import CONFIG_NAME

    for candidate in (folder, folder / "adapter"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def create_app(config: ServeConfig) -> FastAPI:
    """The app; the model loads and the job workers start when the app's lifespan begins."""
    from .routes_console import router as console
    from .routes_details import router as details
    from .routes_files_jobs import router as files_jobs
    from .routes_inference import router as inference

    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.open()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_handlers(app)
    # Starlette runs the last added middleware first: CORS, then the key check, then the size limit.
    app.add_middleware(BodySizeLimit, limit_bytes=int(config.max_request_mb * MB),
                       upload_limit_bytes=int(config.max_upload_mb * MB))
    app.add_middleware(BearerAuth, keys=config.api_keys)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(details, prefix="/v1")  # first: /models/{id}/card before /models/{id:path}
    app.include_router(files_jobs, prefix="/v1")
    app.include_router(inference, prefix="/v1")
    app.include_router(console)  # the web console's static page at / (no data in it; its calls go to /v1)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


def serve(config: ServeConfig, log_level: str = "info") -> None:
    """Run the server until interrupted (the API behind `tuneforge serve`)."""
    import uvicorn

    config.validate()
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not config.api_keys:
        log.warning("no API key is set: anyone who can reach %s:%d may use this server (loopback only)",
                    config.host, config.port)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=log_level)

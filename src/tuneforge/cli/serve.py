"""`tuneforge serve --base MODEL [--adapters DIR ...] [--data-dir DIR] [--host 127.0.0.1 --port 8000]`: a thin
call of tuneforge.serve.serve (OpenAI-compatible API: files, fine-tuning jobs, models, chat and completions)."""
from __future__ import annotations

from typing import List, Optional

import typer


def serve_cmd(
    base: str = typer.Option("smollm2-135m-instruct", "--base", help="Base model: packaged alias, local dir or .gguf."),
    adapters: Optional[List[str]] = typer.Option(
        None, "--adapters", help="Adapter or run folder, or a folder of them (e.g. runs/), served by folder name "
        "(repeatable)."),
    data_dir: str = typer.Option("tuneforge-data", "--data-dir", help="Files, jobs, models and the database."),
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address (beyond loopback only with an API key)."),
    port: int = typer.Option(8000, "--port", help="Listen port."),
    api_key: Optional[List[str]] = typer.Option(
        None, "--api-key", help="Accepted bearer token (repeatable; also TUNEFORGE_API_KEYS=a,b)."),
    base_name: Optional[str] = typer.Option(None, "--base-name", help="Model id of the base (default: its name)."),
    job_config: Optional[str] = typer.Option(
        None, "--job-config", help="Run-config YAML with the defaults of API-created jobs (method, data, train)."),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest uploaded file."),
    adapter_cache_mb: float = typer.Option(1024.0, "--adapter-cache-mb", help="RAM budget of loaded adapters."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Requests generated together."),
    max_concurrent_jobs: int = typer.Option(1, "--max-concurrent-jobs", help="Jobs training at the same time."),
    max_job_epochs: int = typer.Option(50, "--max-job-epochs", help="Most epochs one job may ask for."),
    max_job_tokens: int = typer.Option(
        50_000_000, "--max-job-tokens", help="Most tokens one job may train on (records x epochs x max_length)."),
    allow_python_graders: bool = typer.Option(
        False, "--allow-python-graders", help="Accept reinforcement jobs with python graders (runs callers' code)."),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="Allow this browser origin (repeatable; CORS is off by default)."),
    device: str = typer.Option("auto", "--device", help="Generation device: auto, cpu, cuda, mps."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads for generation (default: torch's)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load pickle weights (adapter_model.bin, pytorch_model.bin): they can run "
        "code, so only for files you trust."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Serve the base model and its adapters over an OpenAI-compatible API, and run fine-tuning jobs."""
    from tuneforge.serve import ServeConfig, serve

    config = ServeConfig(
        base=base, adapters=list(adapters or []), data_dir=data_dir, host=host, port=port,
        api_keys=list(api_key or []), base_name=base_name, job_config=job_config, max_upload_mb=max_upload_mb,
        adapter_cache_mb=adapter_cache_mb, max_batch_size=max_batch_size, max_concurrent_jobs=max_concurrent_jobs,
        max_job_epochs=max_job_epochs, max_job_tokens=max_job_tokens, allow_python_graders=allow_python_graders,
        cors_origins=list(cors_origin or []), device=device, threads=threads, allow_pickle=allow_pickle,
    )
    serve(config, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)

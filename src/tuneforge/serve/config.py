"""What `tuneforge serve` is told: which base model, which adapters, where state lives, who may call it and how
much work it accepts. Plain data (the litgpt convention: each field's docstring is the string below it), so the
CLI flags and the docs come from one place."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from pathlib import Path

from ..errors import ConfigError

API_KEYS_ENV = "TUNEFORGE_API_KEYS"
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclasses.dataclass
class ServeConfig:
    base: str = "smollm2-135m-instruct"
    """Base model every request and every fine-tuning job runs on: packaged alias, local dir or .gguf file."""

    adapters: list[str] = dataclasses.field(default_factory=list)
    """Adapters to serve under their folder name: an adapter folder, a training run's folder (its adapter/), or a
    folder of either (runs/ serves every run)."""

    data_dir: str = "tuneforge-data"
    """Where uploaded files, jobs, their outputs and the SQLite database live; nothing is kept elsewhere."""

    host: str = "127.0.0.1"
    """Address to listen on. Without API keys only a loopback address is allowed."""

    port: int = 8000
    """TCP port to listen on (0: any free port)."""

    api_keys: list[str] = dataclasses.field(default_factory=list)
    """Bearer tokens that may call the API (also read from TUNEFORGE_API_KEYS, comma separated). None: no auth,
    and the server refuses to listen beyond loopback."""

    base_name: str | None = None
    """The id clients use for the base model; default: the packaged alias or the base folder's name."""

    job_config: str | None = None
    """A run-config YAML whose method, data and train settings are the defaults of API-created jobs."""

    max_upload_mb: float = 512.0
    """Largest file POST /v1/files accepts (413 above it)."""

    max_request_mb: float = 8.0
    """Largest body of any other request (413 above it)."""

    adapter_cache_mb: float = 1024.0
    """RAM budget for adapters loaded into the base model; the least recently used are evicted beyond it."""

    max_batch_size: int = 16
    """Most requests generated together in one batch (they may each name a different adapter)."""

    batch_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to join it."""

    max_queued_requests: int = 256
    """Generation requests waiting beyond this are refused with 503."""

    default_max_tokens: int = 256
    """Reply length when a request gives no max_tokens (and the model's context allows it)."""

    allow_python_graders: bool = False
    """Accept reinforcement jobs whose grader is Python code (it runs in the job's worker process). Off by
    default: only for callers trusted to run code on this machine."""

    max_concurrent_jobs: int = 1
    """Fine-tuning jobs that train at the same time (each in its own worker process)."""

    max_job_epochs: int = 50
    """Most epochs (hyperparameters.n_epochs) one job may ask for; more is refused with 400 at creation."""

    max_job_tokens: int = 50_000_000
    """Most tokens one job may train on, counted at creation as records x epochs x data.max_length (each record
    is cut to max_length, so this bounds what the job can cost); more is refused with 400."""

    max_job_restarts: int = 2
    """How often a job whose worker vanished (killed, out of memory, or the server died) resumes from its last
    checkpoint before it is marked failed. A clean server shutdown does not count."""

    cors_origins: list[str] = dataclasses.field(default_factory=list)
    """Browser origins allowed by CORS; empty (the default) sends no CORS headers at all."""

    device: str = "auto"
    """Device for generation in the server process (jobs use their run config's device)."""

    dtype: str = "float32"
    """Weight dtype for generation: float32, bfloat16, float16 or auto."""

    allow_pickle: bool = False
    """Also load pickle weights (a base with only pytorch_model.bin, adapter_model.bin adapters). Unpickling can run
    code from the file, so such files are refused at start unless this is set."""

    threads: int | None = None
    """torch intra-op threads for generation in the server process; None keeps torch's default. On a machine
    shared with training jobs, fewer threads than cores avoids threads spinning while they wait for each other."""

    def __post_init__(self):
        env = os.environ.get(API_KEYS_ENV)
        self._empty_env = env is not None and not any(k.strip() for k in env.split(","))
        from_env = [k.strip() for k in (env or "").split(",") if k.strip()]
        self.api_keys = list(dict.fromkeys([*self.api_keys, *from_env]))

    def validate(self) -> None:
        check_api_keys(self.api_keys)
        if getattr(self, "_empty_env", False):
            # TUNEFORGE_API_KEYS="$UNSET_VARIABLE": the user meant to set a key; never read that as "no auth".
            raise ConfigError(f"{API_KEYS_ENV} is set but holds no key; set a key or unset the variable",
                              key="api_keys")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535 (0: any free port), got {self.port}", key="port")
        for key in ("max_upload_mb", "max_request_mb", "adapter_cache_mb"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive", key=key)
        for key in ("max_batch_size", "max_queued_requests", "default_max_tokens", "max_concurrent_jobs",
                    "max_job_epochs", "max_job_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1", key=key)
        if self.max_job_restarts < 0:
            raise ConfigError("max_job_restarts must not be negative", key="max_job_restarts")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be at least 1 (or unset)", key="threads")
        if self.batch_wait_ms < 0:
            raise ConfigError("batch_wait_ms must not be negative", key="batch_wait_ms")
        if self.base_name is not None and not SERVED_NAME.match(self.base_name):
            raise ConfigError("base_name may hold letters, digits, '.', '_' and '-' (at most 64)", key="base_name")
        if not self.api_keys and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host} without authentication: give --api-key (or set "
                f"{API_KEYS_ENV}), or listen on 127.0.0.1", key="host")

    def served_base_name(self) -> str:
        """The base's model id: base_name, else the alias or the last path part, made URL- and id-safe."""
        if self.base_name:
            return self.base_name
        stem = Path(self.base.rstrip("/")).name or self.base
        if stem.endswith(".gguf"):
            stem = stem[: -len(".gguf")]
        return re.sub(r"[^A-Za-z0-9._-]", "-", stem)[:64] or "base"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()


def check_api_keys(keys) -> None:
    """An empty or whitespace key (`--api-key "$UNSET"`) would accept `Authorization: Bearer ` and so open the
    server to anyone: refuse it, as well as keys with surrounding spaces (a header value is stripped)."""
    if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
        raise ConfigError("api_keys must be a list of strings", key="api_keys")
    for index, key in enumerate(keys):
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"API key {index + 1} is empty; an empty key would let anyone in (is the variable "
                              "you passed to --api-key unset?)", key="api_keys")
        if key != key.strip() or any(ord(c) < 33 or ord(c) == 127 for c in key):
            raise ConfigError(f"API key {index + 1} holds spaces or control characters; a bearer token cannot",
                              key="api_keys")


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (a name is resolved, so a typo cannot open the server)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False

"""Starting a multi-process run and joining its process group: the torchrun command line `tuneforge train
--nproc N` execs, and what each process does first (pick the backend and device, join the group torchrun's
environment describes). What the processes then do together is in distributed.py.

torchrun (`python -m torch.distributed.run`) starts the processes, gives each RANK, LOCAL_RANK, WORLD_SIZE and
the rendezvous address in its environment, restarts nothing (max-restarts 0) and, when one process fails, stops
the others and prints a summary of the failed ranks; `record_failure` puts each one's error message in it.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from ..errors import ConfigError


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def launched_world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE), 1 when not launched by it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT), with the
    backend the device needs; on CUDA each process takes the GPU of its LOCAL_RANK. Returns True when this call
    created the group (the caller then ends it with `shutdown`), False in one process or when one exists."""
    if launched_world_size() < 2 or (dist.is_available() and dist.is_initialized()):
        return False
    from ..models import resolve_device

    target = resolve_device(device)
    options = {}
    if target.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        options["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend_for(target), **options)
    if dist.get_rank() != 0:  # one progress bar per run: process 0's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def torchrun_command(config: str, extra_args=(), *, nproc: int, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "tuneforge") -> list[str]:
    """The torchrun command line that runs `tuneforge train CONFIG ...` on nproc processes per node. One node:
    `--standalone` (a local rendezvous on a free port). Several: every node runs the same command with the
    address of one of them as `host:port` (c10d rendezvous; node ranks are assigned as nodes join)."""
    if nproc < 1 or nnodes < 1:
        raise ConfigError("--nproc and --nnodes must be at least 1", key="nproc")
    if nnodes > 1 and not rdzv_endpoint:
        raise ConfigError("a run on several nodes needs --rdzv-endpoint HOST:PORT (the same on every node)",
                          key="rdzv_endpoint")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if rdzv_endpoint:
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                "--rdzv-id", rdzv_id]
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "tuneforge", "train", str(config), *extra_args]


def launch(config: str | os.PathLike, overrides=(), *, nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None,
           resume: bool = True, progress: bool = True, replace_process: bool = False) -> int:
    """Run `train(config)` on nproc processes (per node) through torchrun. replace_process execs torchrun in place
    of this process (what the CLI does, so signals and exit codes pass straight through); otherwise it runs as a
    child and its exit status is returned (non-zero when any process failed; torchrun then stops all of them)."""
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError("a multi-process run needs the config as a YAML file path", key="config")
    extra = [arg for o in overrides or () for arg in ("--set", o)]
    extra += [] if resume else ["--no-resume"]
    extra += [] if progress else ["--quiet"]
    cmd = torchrun_command(os.fspath(config), extra, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    if replace_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)
    import subprocess

    return subprocess.run(cmd).returncode


def record_failure(err: BaseException) -> None:
    """Inside an `except` block of a process torchrun started: write the error where torchrun reads it
    (TORCHELASTIC_ERROR_FILE), so its failure summary shows this process's rank with the message and traceback
    instead of only an exit code. Does nothing outside torchrun."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(err)

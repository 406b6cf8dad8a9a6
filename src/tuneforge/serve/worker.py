"""`python -m tuneforge.serve.worker JOB_DIR`: train one fine-tuning job, in a process of its own.

Why a separate process: training holds the CPU/GPU for minutes and allocates gigabytes; the web process must
keep answering (and generating) meanwhile, and a crash or an out-of-memory kill of the trainer must not take the
server with it.

The job directory holds `run.json` (the run config the server built) and receives `output/` (the trainer's
adapter, checkpoints and metrics.jsonl), `worker.log` and, when the worker ends on its own, `result.json`:
    {"status": "succeeded", "steps", "train_loss", "eval_metrics", "trained_tokens", "data"}
("data": records, examples, dropped and truncated per split, with shares: train/data_report.py)
    {"status": "failed", "error": {"code", "message", "param"}}
A worker that is interrupted (the job was cancelled, the server shut down, SIGINT/SIGTERM) saves a checkpoint
of its last finished step and exits without a result; one that is killed leaves none either. Either way the
server resumes the job from output/checkpoints when it should (the trainer resumes exactly).

`worker.lock` is held (flock) for the worker's whole life, so the server can tell for certain that no older
worker of the job is still running before it starts another.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

PARENT_ENV = "TUNEFORGE_SERVER_PID"
RESULT = "result.json"
LOCK = "worker.lock"


def hold_lock(job_dir: Path):
    """Take the job's lock or exit: two workers must never write the same checkpoints."""
    handle = open(job_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another worker holds this job", file=sys.stderr)
        raise SystemExit(3) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def watch_parent(parent_pid: int, poll_s: float = 0.5, grace_s: float = 60.0) -> None:
    """When the server that started us is gone, stop as if interrupted (a checkpoint is saved), and exit hard
    if that takes longer than grace_s: an orphaned worker must not keep training a job nobody supervises."""

    def loop():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def write_result(job_dir: Path, result: dict) -> None:
    tmp = job_dir / f".{RESULT}.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, job_dir / RESULT)


def error_result(err: Exception, run: dict) -> dict:
    """The OpenAI-shaped error of a failed job; data paths are shown as the file ids the client knows."""
    from ..errors import ConfigError, DataError

    message = str(err)
    data = run.get("data", {})
    names = {data.get("train"): "training_file", data.get("validation"): "validation_file"}
    for path in names:
        if path:
            message = message.replace(path, Path(path).stem)
    if isinstance(err, DataError):
        param = names.get(str(err.file), "training_file")
        return {"code": f"invalid_{param}", "message": message, "param": param}
    if isinstance(err, ConfigError):
        return {"code": "invalid_request", "message": message, "param": None}
    return {"code": "server_error", "message": f"{type(err).__name__}: {message}", "param": None}


def run_job(job_dir: Path) -> int:
    from ..errors import TuneforgeError
    from ..train import train

    run = json.loads((job_dir / "run.json").read_text())
    (job_dir / RESULT).unlink(missing_ok=True)
    try:
        result = train(run, progress=False)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept for resuming", file=sys.stderr)
        return 130
    except TuneforgeError as err:
        print(f"error: {err}", file=sys.stderr)
        write_result(job_dir, {"status": "failed", "error": error_result(err, run)})
        return 2
    except Exception as err:  # noqa: BLE001 - reported to the client as a server error, traceback in the log
        traceback.print_exc()
        write_result(job_dir, {"status": "failed", "error": error_result(err, run)})
        return 1
    tokens = next((r["tokens"] for r in reversed(result.history) if "tokens" in r), None)
    write_result(job_dir, {"status": "succeeded", "steps": result.steps, "train_loss": result.train_loss,
                           "eval_metrics": result.eval_metrics, "trained_tokens": tokens,
                           "data": result.data_report})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tuneforge.serve.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0]).resolve()
    lock = hold_lock(job_dir)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        watch_parent(int(parent))
    try:
        return run_job(job_dir)
    finally:
        lock.close()


if __name__ == "__main__":
    raise SystemExit(main())

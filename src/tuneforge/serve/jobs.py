"""Fine-tuning jobs: created by the API, trained one at a time (by default) in worker processes, watched by a
supervisor thread each, and recorded in the store at every change.

Life of a job: queued -> running -> succeeded | failed | cancelled. Its files live in
`<data>/jobs/<job id>/` (run.json, output/, worker.log, result.json; see worker.py).

What survives what:
- A worker that vanishes without a result (killed, out of memory) and a server that dies while a job runs are
  treated the same: the job goes back to the queue and **resumes from its last checkpoint** (the trainer resumes
  exactly: same data order, optimizer state, RNG), at most `max_restarts` times; then it fails.
- Shutting the server down interrupts the workers (they save a checkpoint) and queues their jobs again, so the
  next start resumes them (this does not count as a restart).
- Finished jobs and their models stay listed across restarts (they live in the store).

Progress events come from the trainer's metrics.jsonl, tailed by the supervisor; a step's event is recorded
once even when a resumed run recomputes that step.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .store import ACTIVE_STATES, Store
from .worker import LOCK, PARENT_ENV, RESULT

POLL_S = 0.25
CANCEL_GRACE_S = 30.0


def fine_tuned_name(base_name: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:<base>:<suffix>:<id> (empty suffix kept as an empty field)."""
    return f"ft:{base_name}:{suffix or ''}:{job_id.split('-', 1)[1]}"


class JobManager:
    def __init__(self, store: Store, data_dir: Path, base_name: str, max_concurrent: int = 1,
                 max_restarts: int = 2, on_model=lambda model_id: None):
        self.store, self.data_dir, self.base_name = store, Path(data_dir), base_name
        self.max_concurrent, self.max_restarts, self.on_model = max_concurrent, max_restarts, on_model
        self._running: dict[str, threading.Thread] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        self._scheduler = threading.Thread(target=self._schedule, name="tuneforge-jobs", daemon=True)
        self._scheduler.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Interrupt running workers (each saves a checkpoint) and leave their jobs to resume on next start."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            procs = dict(self._procs)
        for proc in procs.values():
            _signal(proc, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
        for thread in list(self._running.values()):
            thread.join(timeout=5)
        for job_id in procs:
            if self.store.update_job(job_id, when=("running",), status="queued", worker_pid=None):
                self.store.add_event(job_id, f"The server shut down; the job will resume "
                                             f"{self._resume_point(job_id)} at the next start.")

    def _recover(self) -> None:
        """Jobs still marked running lost their server: finish those whose worker reported meanwhile, queue the
        others to resume from their last checkpoint."""
        for job in self.store.list_jobs(("running", "validating_files")):
            if job["status"] == "validating_files" and not (self.job_dir(job["id"]) / "run.json").is_file():
                self._fail(job["id"], {"code": "server_error", "param": None, "message":
                                       "the server stopped before the job's run config was written; "
                                       "create the job again"})
                continue
            if (self.job_dir(job["id"]) / RESULT).is_file():
                self._finish(job["id"], 0)
                continue
            self._requeue(job, f"The server restarted while this job was running; it will resume "
                               f"{self._resume_point(job['id'])}.")

    def _requeue(self, job: dict, message: str) -> None:
        """Back to the queue after its worker vanished, or failed when that happened too often."""
        restarts = job["restarts"] + 1
        if restarts > self.max_restarts:
            return self._fail(job["id"], {"code": "worker_died", "param": None, "message":
                                          f"the training worker stopped unexpectedly {restarts} times"})
        if self.store.update_job(job["id"], when=("running", "validating_files"), status="queued",
                                 restarts=restarts, worker_pid=None):
            self.store.add_event(job["id"], message, level="warn")

    def _resume_point(self, job_id: str) -> str:
        from ..train.checkpoint import latest_checkpoint

        latest = latest_checkpoint(self.job_dir(job_id) / "output" / "checkpoints")
        return f"from checkpoint {latest.name}" if latest else "from the beginning (no checkpoint was saved yet)"

    # ---- requests -----------------------------------------------------------------------------------------
    def submit(self, job_id: str, run_config: dict) -> None:
        """Write the job's run config, then queue it. The row exists as validating_files until run.json is on
        disk, so the scheduler (which polls every second) never starts a job that has no config yet."""
        job_dir = self.job_dir(job_id)
        (job_dir / "output").mkdir(parents=True, exist_ok=True)
        (job_dir / "run.json").write_text(json.dumps(run_config, indent=1))
        self.store.add_event(job_id, "Validated the training file; the job is queued.")
        self.store.update_job(job_id, when=("validating_files",), status="queued")
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Mark the job cancelled (if it is still active) and interrupt its worker."""
        changed = self.store.update_job(job_id, when=ACTIVE_STATES, status="cancelled", finished_at=int(time.time()))
        if changed:
            self.store.add_event(job_id, "The job was cancelled.")
            with self._lock:
                proc = self._procs.get(job_id)
            if proc is not None:
                _signal(proc, signal.SIGINT)
        return changed

    def checkpoints(self, job_id: str) -> list[dict]:
        """The job's resumable checkpoints, newest first: step, when, and the metrics recorded at that step."""
        from ..train.checkpoint import list_checkpoints

        out = []
        for path in reversed(list_checkpoints(self.job_dir(job_id) / "output" / "checkpoints")):
            try:
                state = json.loads((path / "state.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            step = int(state.get("global_step", 0))
            history = [r for r in state.get("history", []) if r.get("step") == step]
            metrics = {"step": step}
            for record in history:
                if "loss" in record:
                    metrics["train_loss"] = record["loss"]
                if "eval_loss" in record:
                    metrics["valid_loss"] = record["eval_loss"]
            out.append({"step": step, "created_at": int(path.stat().st_mtime), "metrics": metrics})
        return out

    # ---- scheduling ---------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                self._running = {k: t for k, t in self._running.items() if t.is_alive()}
                free = self.max_concurrent - len(self._running)
                queued = [j for j in reversed(self.store.list_jobs(("queued",))) if j["id"] not in self._running]
                for job in queued[: max(0, free)]:
                    thread = threading.Thread(target=self._supervise, args=(job["id"],), daemon=True,
                                              name=f"job-{job['id']}")
                    self._running[job["id"]] = thread
                    thread.start()

    def _supervise(self, job_id: str) -> None:
        try:
            self._run_attempt(job_id)
        except Exception as err:  # noqa: BLE001 - a supervisor bug must fail the job, not hang it
            self._fail(job_id, {"code": "server_error", "message": f"supervisor error: {err}", "param": None})
        finally:
            self._wake.set()

    def _run_attempt(self, job_id: str) -> None:
        job_dir = self.job_dir(job_id)
        _wait_for_previous_worker(job_dir)
        job = self.store.get_job(job_id)
        attempts = job["attempts"] + 1
        if not self.store.update_job(job_id, when=("queued",), status="running", attempts=attempts,
                                     started_at=job["started_at"] or int(time.time())):
            return  # cancelled meanwhile
        where = self._resume_point(job_id)
        self.store.add_event(job_id, "Fine-tuning job started." if attempts == 1 and "beginning" in where
                             else f"Fine-tuning resumed {where} (attempt {attempts}).")
        (job_dir / RESULT).unlink(missing_ok=True)
        proc = self._launch(job_dir)
        with self._lock:
            self._procs[job_id] = proc
        self.store.update_job(job_id, worker_pid=proc.pid)
        cancel_sent = None
        while proc.poll() is None:
            time.sleep(POLL_S)
            self._tail_metrics(job_id)
            if cancel_sent is None and self.store.get_job(job_id)["status"] == "cancelled":
                _signal(proc, signal.SIGINT)
                cancel_sent = time.monotonic()
            if cancel_sent is not None and time.monotonic() - cancel_sent > CANCEL_GRACE_S:
                _signal(proc, signal.SIGKILL)
        with self._lock:
            self._procs.pop(job_id, None)
        self._tail_metrics(job_id)
        self._finish(job_id, proc.returncode)

    def _launch(self, job_dir: Path) -> subprocess.Popen:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        log = open(job_dir / "worker.log", "ab")
        try:
            # A session of its own: Ctrl-C in the server's terminal reaches the server, which then stops the
            # worker itself (with a checkpoint) instead of both racing.
            return subprocess.Popen([sys.executable, "-m", "tuneforge.serve.worker", str(job_dir)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=job_dir)
        finally:
            log.close()

    def _finish(self, job_id: str, returncode: int) -> None:
        status = self.store.get_job(job_id)["status"]
        if status == "cancelled":
            return
        result_path = self.job_dir(job_id) / RESULT
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
        if result is None:
            if self._stopping.is_set():
                return  # left running in the store: the next start resumes it
            how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
            return self._requeue(self.store.get_job(job_id), f"The training worker stopped unexpectedly ({how}); "
                                                             f"the job will resume {self._resume_point(job_id)}.")
        if result["status"] != "succeeded":
            return self._fail(job_id, result["error"])
        self._data_events(job_id, result.get("data") or {})
        job = self.store.get_job(job_id)
        name = fine_tuned_name(self.base_name, job["suffix"], job_id)
        adapter = (self.job_dir(job_id) / "output" / "adapter").relative_to(self.data_dir)
        self.store.add_model(name, str(adapter), job_id)
        if self.store.update_job(job_id, when=("running",), status="succeeded", fine_tuned_model=name,
                                 finished_at=int(time.time()), trained_tokens=result.get("trained_tokens"),
                                 worker_pid=None):
            self.store.add_event(job_id, f"New fine-tuned model created: {name}")
            self.store.add_event(job_id, "The job has successfully completed.")
            self.on_model(name)
        else:
            self.store.delete_model(name)  # cancelled in the last moment: no model

    def _data_events(self, job_id: str, report: dict) -> None:
        """What became of each file's rows (train/data_report.py): a warning event when rows were dropped."""
        if not report:
            return
        run_path = self.job_dir(job_id) / "run.json"
        run = json.loads(run_path.read_text()) if run_path.is_file() else {}
        threshold = (run.get("data") or {}).get("warn_dropped_share", 0.05)
        for split, entry in report.items():
            name = "training" if split == "train" else "validation"
            self.store.add_event(
                job_id, f"{entry['dropped']} of {entry['records']} {name} examples ({entry['dropped_share']:.1%}) "
                        f"were dropped (nothing left to train within the token limit); {entry['truncated']} "
                        f"({entry['truncated_share']:.1%}) were truncated.",
                level="warn" if entry["dropped_share"] > threshold else "info", data={**entry, "split": split})

    def _fail(self, job_id: str, error: dict) -> None:
        if self.store.update_job(job_id, when=ACTIVE_STATES, status="failed", error=error,
                                 finished_at=int(time.time()), worker_pid=None):
            self.store.add_event(job_id, f"Fine-tuning job failed: {error['message']}", level="error")

    def _tail_metrics(self, job_id: str) -> None:
        path = self.job_dir(job_id) / "output" / "metrics.jsonl"
        if not path.is_file():
            return
        job = self.store.get_job(job_id)
        last_train, last_eval, tokens = job["last_step"], job["last_eval_step"], None
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            step = int(record.get("step", 0))
            if "loss" in record and step > last_train:
                last_train, tokens = step, record.get("tokens")
                self.store.add_event(job_id, f"Step {step}: training loss={_fmt(record['loss'])}", type="metrics",
                                     data={"step": step, "train_loss": record["loss"], "epoch": record.get("epoch"),
                                           "learning_rate": record.get("lr"), "trained_tokens": tokens})
            elif "lr" not in record and "loss" not in record and step > last_eval:
                last_eval = step
                metrics = {k: v for k, v in record.items() if k not in ("step", "epoch", "elapsed_s")}
                shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
                self.store.add_event(job_id, f"Step {step}: validation {shown}", type="metrics",
                                     data={"step": step, **{("valid_loss" if k == "eval_loss" else k): v
                                                            for k, v in metrics.items()}})
        if (last_train, last_eval) != (job["last_step"], job["last_eval_step"]):
            fields = {"last_step": last_train, "last_eval_step": last_eval}
            if tokens is not None:
                fields["trained_tokens"] = tokens
            self.store.update_job(job_id, **fields)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _wait_for_previous_worker(job_dir: Path, timeout: float = 120.0) -> None:
    """Block until no worker holds the job's lock (an old worker finishing its checkpoint after a restart)."""
    import fcntl

    job_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(job_dir / LOCK, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"an earlier worker of {job_dir.name} still holds its lock") from None
                time.sleep(0.5)

"""The server's memory: files, fine-tuning jobs, their events and the models they produced, in one SQLite
database (WAL mode) under the data directory, so a restart loses nothing and the worker processes can write
events while the web process reads them.

Every write is one short transaction; status changes are conditional (`... WHERE status IN (...)`) so a job
cancelled while its worker finishes ends in exactly one state. IDs are made here (`file-<hex>`, `ftjob-<hex>`)
and checked against their pattern before any lookup, so an id from a request is never a path.
"""
from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ID_PATTERNS = {
    "file": re.compile(r"^file-[0-9a-f]{24}$"),
    "ftjob": re.compile(r"^ftjob-[0-9a-f]{24}$"),
    "ftevent": re.compile(r"^ftevent-[0-9a-f]{24}$"),
}
ACTIVE_STATES = ("validating_files", "queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL, records INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, seq INTEGER NOT NULL, model TEXT NOT NULL,
    training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT, status TEXT NOT NULL,
    hyperparameters TEXT NOT NULL, method TEXT NOT NULL, seed INTEGER NOT NULL, metadata TEXT,
    error TEXT, fine_tuned_model TEXT, started_at INTEGER, finished_at INTEGER, trained_tokens INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0, last_step INTEGER NOT NULL DEFAULT 0,
    last_eval_step INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER, integrations TEXT);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, job_id TEXT, adapter_dir TEXT NOT NULL);
"""
JSON_COLUMNS = ("hyperparameters", "method", "metadata", "error", "data", "integrations")


def new_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


def valid_id(kind: str, value: str) -> bool:
    return bool(ID_PATTERNS[kind].match(value or ""))


def _now() -> int:
    return int(time.time())


class Store:
    """Thread-safe access to the database (one connection per thread; each call commits on return)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(SCHEMA)  # executescript commits on its own
        columns = {row[1] for row in self._db().execute("PRAGMA table_info(jobs)")}
        if "integrations" not in columns:  # a database made before jobs kept their integrations
            self._db().execute("ALTER TABLE jobs ADD COLUMN integrations TEXT")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _rows(self, sql: str, args=()) -> list[dict]:
        return [_decode(r) for r in self._db().execute(sql, args).fetchall()]

    def _one(self, sql: str, args=()) -> dict | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    @staticmethod
    def _next_seq(db, table: str) -> int:
        return int(db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()[0])

    # ---- files ------------------------------------------------------------------------------------------
    def add_file(self, file_id: str, filename: str, purpose: str, size: int, records: int) -> dict:
        with self._tx() as db:
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (file_id, filename, purpose, size, _now(), records, self._next_seq(db, "files")))
        return self.get_file(file_id)

    def get_file(self, file_id: str) -> dict | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,)) if valid_id("file", file_id) else None

    def list_files(self) -> list[dict]:
        return self._rows("SELECT * FROM files ORDER BY seq DESC")

    def delete_file(self, file_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0

    # ---- jobs -------------------------------------------------------------------------------------------
    def add_job(self, job: dict) -> dict:
        row = {**job, "created_at": _now()}
        for key in JSON_COLUMNS:
            if key in row:
                row[key] = json.dumps(row[key])
        with self._tx() as db:
            row["seq"] = self._next_seq(db, "jobs")
            cols = ", ".join(row)
            db.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        return self.get_job(job["id"])

    def get_job(self, job_id: str) -> dict | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,)) if valid_id("ftjob", job_id) else None

    def list_jobs(self, statuses: tuple[str, ...] | None = None) -> list[dict]:
        if statuses:
            marks = ", ".join("?" * len(statuses))
            return self._rows(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq DESC", statuses)
        return self._rows("SELECT * FROM jobs ORDER BY seq DESC")

    def jobs_using_file(self, file_id: str) -> list[dict]:
        marks = ", ".join("?" * len(ACTIVE_STATES))
        return self._rows(f"SELECT * FROM jobs WHERE (training_file = ? OR validation_file = ?) AND status IN "
                          f"({marks})", (file_id, file_id, *ACTIVE_STATES))

    def update_job(self, job_id: str, when: tuple[str, ...] | None = None, **fields) -> bool:
        """Set fields; with `when`, only if the job's status is one of those. Returns whether it changed."""
        values = [json.dumps(v) if k in JSON_COLUMNS else v for k, v in fields.items()]
        sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        args = [*values, job_id]
        if when:
            sql += f" AND status IN ({', '.join('?' * len(when))})"
            args.extend(when)
        with self._tx() as db:
            return db.execute(sql, args).rowcount > 0

    # ---- events -----------------------------------------------------------------------------------------
    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events (id, job_id, created_at, level, type, message, data) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?)", (new_id("ftevent"), job_id, _now(), level, type, message,
                                                 json.dumps(data) if data is not None else None))

    def list_events(self, job_id: str) -> list[dict]:
        """Newest first, as the OpenAI API lists them."""
        return self._rows("SELECT * FROM events WHERE job_id = ? ORDER BY seq DESC", (job_id,))

    # ---- models -----------------------------------------------------------------------------------------
    def add_model(self, model_id: str, adapter_dir: str, job_id: str | None) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?)", (model_id, _now(), job_id, adapter_dir))

    def list_models(self) -> list[dict]:
        return self._rows("SELECT * FROM models ORDER BY created_at, id")

    def get_model(self, model_id: str) -> dict | None:
        return self._one("SELECT * FROM models WHERE id = ?", (model_id,))

    def delete_model(self, model_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount > 0


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out

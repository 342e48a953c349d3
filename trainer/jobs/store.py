"""The job table: one SQLite file (`<home>/studio.sqlite`) shared by the supervisor, runners and the web UI.

    store = JobStore(home.db)
    store.insert(job_id, name="cats", total_steps=300)
    store.update(job_id, status="running", pid=1234, pid_start=98765)

Every call opens a short connection and commits before it returns, so several processes (CLI, web server,
runners) can use the file at once; SQLite's own locking serialises the writers. Opening an existing
table writes nothing, so `jobs list` works on a full disk; a write that finds the disk full raises
`DiskFullError` ("the disk is full", with the path).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.errors import JobError
from trainer.jobs.events import finite

STATUSES = ("queued", "running", "done", "failed", "stopped", "interrupted")
FINISHED = ("done", "failed", "stopped", "interrupted")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    pid         INTEGER,
    pid_start   INTEGER,
    step        INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    loss        REAL,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    request_key TEXT UNIQUE,
    outputs     TEXT NOT NULL DEFAULT '[]',
    library     TEXT NOT NULL DEFAULT '[]',
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_COLUMNS = ("name", "status", "pid", "pid_start", "step", "total_steps", "loss", "request_key",
            "outputs", "library", "error", "attempts")
_JSON_COLUMNS = ("outputs", "library")


class DiskFullError(JobError):
    """The job table could not be written because the disk is full; reads still work."""


class JobStore:
    """Rows of the `jobs` table as plain dicts; statuses are checked on every write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._schema_version() == SCHEMA_VERSION:
            return  # nothing to create or migrate: opening writes nothing (a full disk still lists jobs)
        with self._connect(immediate=True) as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobError(f"was written by a newer LoRA Studio (schema {version})", where=str(self.path),
                               fix="Upgrade LoRA Studio, or point --home at another folder.")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version(self) -> int | None:
        """The file's schema version, read without writing anything; None if it is not there yet."""
        if not self.path.is_file():
            return None
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            try:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                version = db.execute("PRAGMA user_version").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            return None  # let the normal open below report it
        return version if {"jobs", "settings"} <= tables else None

    @contextlib.contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as err:
            raise JobError(f"cannot be opened ({err})", where=str(self.path),
                           fix="Check that the home folder exists and is writable.") from err
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException as err:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
                raise DiskFullError(f"could not be written: the disk is full ({err})", where=str(self.path),
                                    fix=f"Free space on the disk that holds {self.path.parent}; reading jobs "
                                        "still works meanwhile.") from err
            raise
        finally:
            db.close()

    def insert(self, job_id: str, name: str, total_steps: int, request_key: str | None = None) -> str:
        """Add a queued job; with a `request_key` already used, return that job's id instead."""
        now = time.time()
        with self._connect(immediate=True) as db:
            if request_key is not None:
                row = db.execute("SELECT id FROM jobs WHERE request_key = ?", (request_key,)).fetchone()
                if row is not None:
                    return row["id"]
            db.execute(
                "INSERT INTO jobs (id, name, status, total_steps, created, updated, request_key)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, name, total_steps, now, now, request_key),
            )
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job with id {job_id!r}", fix="List the jobs with `lora-studio jobs list`.")
        return _to_dict(row)

    def all(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created, id").fetchall()
        return [_to_dict(row) for row in rows]

    def update(self, job_id: str, only_if: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set columns of one job; with `only_if`, only while its status is one of those. True if changed."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown job status {fields['status']!r}; one of {STATUSES}")
        values = {k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in finite(fields).items()}
        values["updated"] = time.time()
        sql = "UPDATE jobs SET " + ", ".join(f"{k} = ?" for k in values) + " WHERE id = ?"
        params: list[Any] = [*values.values(), job_id]
        if only_if:
            sql += f" AND status IN ({', '.join('?' * len(only_if))})"
            params += list(only_if)
        with self._connect(immediate=True) as db:
            return db.execute(sql, params).rowcount == 1

    def claim_next(self, max_concurrent: int) -> dict[str, Any] | None:
        """Mark the oldest queued job `running` (pid not yet known) if fewer than `max_concurrent` run."""
        with self._connect(immediate=True) as db:
            running = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
            if running >= max_concurrent:
                return None
            row = db.execute(
                "SELECT * FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', pid = NULL, pid_start = NULL, error = NULL,"
                " attempts = attempts + 1, updated = ? WHERE id = ?",
                (time.time(), row["id"]),
            )
        return {**_to_dict(row), "status": "running", "pid": None, "pid_start": None}

    def mark_interrupted(self, job_id: str, pid: int | None) -> bool:
        """`running` -> `interrupted`, only while the row still names this runner `pid`."""
        with self._connect(immediate=True) as db:
            cursor = db.execute("UPDATE jobs SET status = 'interrupted', updated = ? "
                                "WHERE id = ? AND status = 'running' AND pid IS ?", (time.time(), job_id, pid))
            return cursor.rowcount == 1

    def find(self, request_key: str) -> str | None:
        """The id of the job submitted with this request key, if any."""
        with self._connect() as db:
            row = db.execute("SELECT id FROM jobs WHERE request_key = ?", (request_key,)).fetchone()
        return row["id"] if row else None

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._connect() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        with self._connect(immediate=True) as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def delete(self, job_id: str) -> None:
        with self._connect(immediate=True) as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    for key in _JSON_COLUMNS:
        job[key] = json.loads(job[key] or "[]")
    return job

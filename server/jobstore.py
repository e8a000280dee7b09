"""The durable store of asynchronous (v2) jobs: SQLite in WAL mode plus a folder of files.

A job's inputs are stored already fetched and decoded (so a URL that changes later cannot
change a queued job), its result next to them. Statuses: QUEUED -> PROCESSING -> COMPLETED |
FAILED, or QUEUED -> CANCELLED. `attempts` counts starts: after a crash a job found PROCESSING
is queued again once, and failed if it was already retried.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    idempotency_key TEXT,
    body_hash TEXT,
    webhook_url TEXT,
    error TEXT,
    result_file TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    inference_time REAL,
    expires_at REAL NOT NULL,
    UNIQUE (key_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
MAX_ATTEMPTS = 2
INPUTS = ("main_image", "mask_image", "object_image")


@dataclass(frozen=True)
class JobRecord:
    id: str
    key_id: str
    status: str
    params: dict
    idempotency_key: str | None
    body_hash: str | None
    webhook_url: str | None
    error: str | None
    result_file: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    inference_time: float | None
    expires_at: float

    @property
    def metrics(self) -> dict:
        queue = (self.started_at or self.finished_at or time.time()) - self.created_at
        total = (self.finished_at or time.time()) - self.created_at
        return {"queue_time": round(queue, 3), "inference_time": round(self.inference_time or 0.0, 3),
                "total_time": round(total, 3)}


class DuplicateSubmit(Exception):
    def __init__(self, existing: JobRecord):
        super().__init__(existing.id)
        self.existing = existing


class JobStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (self.folder / "jobs").mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.folder / "jobs.sqlite3", timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def job_dir(self, job_id: str) -> Path:
        return self.folder / "jobs" / job_id

    # -- writing ----------------------------------------------------------------------

    def create(self, key_id: str, params: dict, images: dict[str, Image.Image], retention_s: float,
               idempotency_key: str | None = None, body_hash: str | None = None, webhook_url: str | None = None) -> JobRecord:
        """Store the inputs, then the row; a repeated idempotency key raises DuplicateSubmit with the first job."""
        job_id = uuid.uuid4().hex
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        for name, image in images.items():
            image.save(folder / f"{name}.png", compress_level=1)
        now = time.time()
        try:
            self._db().execute(
                "INSERT INTO jobs (id, key_id, status, params, idempotency_key, body_hash, webhook_url, created_at, expires_at)"
                " VALUES (?, ?, 'QUEUED', ?, ?, ?, ?, ?, ?)",
                (job_id, key_id, json.dumps(params), idempotency_key, body_hash, webhook_url, now, now + retention_s),
            )
        except sqlite3.IntegrityError:
            shutil.rmtree(folder, ignore_errors=True)
            raise DuplicateSubmit(self.find_idempotent(key_id, idempotency_key)) from None
        return self.get(job_id)

    def mark_started(self, job_id: str) -> bool:
        """QUEUED -> PROCESSING; False if the job is no longer QUEUED (cancelled meanwhile): do not run it."""
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'PROCESSING', attempts = attempts + 1, started_at = ? WHERE id = ? AND status = 'QUEUED'",
            (time.time(), job_id),
        )
        return cursor.rowcount == 1

    def complete(self, job_id: str, result: bytes, extension: str, inference_time: float) -> None:
        name = f"result.{extension}"
        path = self.job_dir(job_id) / name
        path.with_suffix(".tmp").write_bytes(result)
        path.with_suffix(".tmp").replace(path)
        self._db().execute(
            "UPDATE jobs SET status = 'COMPLETED', result_file = ?, finished_at = ?, inference_time = ? WHERE id = ?",
            (name, time.time(), inference_time, job_id),
        )

    def fail(self, job_id: str, error: str) -> None:
        self._db().execute(
            "UPDATE jobs SET status = 'FAILED', error = ?, finished_at = ? WHERE id = ? AND status IN ('QUEUED', 'PROCESSING')",
            (error, time.time(), job_id),
        )

    def cancel(self, job_id: str) -> bool:
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'CANCELLED', finished_at = ? WHERE id = ? AND status = 'QUEUED'", (time.time(), job_id)
        )
        return cursor.rowcount == 1

    def recover(self) -> tuple[int, int]:
        """After a restart: jobs caught PROCESSING go back to QUEUED once, or fail. Returns (requeued, failed)."""
        db = self._db()
        requeued = db.execute(
            "UPDATE jobs SET status = 'QUEUED', started_at = NULL WHERE status = 'PROCESSING' AND attempts < ?", (MAX_ATTEMPTS,)
        ).rowcount
        failed = db.execute(
            "UPDATE jobs SET status = 'FAILED', error = 'the job was interrupted twice by a server restart', finished_at = ?"
            " WHERE status = 'PROCESSING'", (time.time(),)
        ).rowcount
        return requeued, failed

    def purge_expired(self) -> int:
        now = time.time()
        expired = [row["id"] for row in self._db().execute("SELECT id FROM jobs WHERE expires_at < ?", (now,))]
        for job_id in expired:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            self._db().execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return len(expired)

    # -- reading ----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def find_idempotent(self, key_id: str, idempotency_key: str | None) -> JobRecord | None:
        row = self._db().execute(
            "SELECT * FROM jobs WHERE key_id = ? AND idempotency_key = ?", (key_id, idempotency_key)
        ).fetchone()
        return _record(row) if row else None

    def queued(self, exclude: set[str], limit: int) -> list[JobRecord]:
        rows = self._db().execute("SELECT * FROM jobs WHERE status = 'QUEUED' ORDER BY created_at LIMIT ?",
                                  (limit + len(exclude),)).fetchall()
        return [_record(row) for row in rows if row["id"] not in exclude][:limit]

    def count_pending(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM jobs WHERE status IN ('QUEUED', 'PROCESSING')").fetchone()[0]

    def load_inputs(self, job_id: str) -> dict[str, Image.Image]:
        images = {}
        for name in INPUTS:
            with Image.open(self.job_dir(job_id) / f"{name}.png") as image:
                images[name] = image.copy()
        return images

    def result_path(self, record: JobRecord) -> Path | None:
        return self.job_dir(record.id) / record.result_file if record.result_file else None


def _record(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    return JobRecord(**values)

"""The durable store of asynchronous (v2) jobs: rows in SQLite (WAL) or PostgreSQL, plus a folder of files.

A job's inputs are stored already fetched, as the bytes that were received (so a URL that changes
later cannot change a queued job; decoded images would take ten times the space), its result next
to them; `stored_bytes` counts both, for the per-key caps. Statuses: QUEUED -> PROCESSING -> COMPLETED |
FAILED, or QUEUED -> CANCELLED. `attempts` counts starts: after a crash a job found PROCESSING
is queued again once, and failed if it was already retried. `priority` (interactive or batch) is a
column, not a parameter: the dispatcher asks for the oldest QUEUED jobs of each class, and a
job queued again after a crash keeps its class.

Rows: by default an SQLite file in `jobs_dir`, for one server. With `SEGSWAP_DATABASE_URL`
they live in PostgreSQL, shared by several replicas: `mark_started` (one conditional UPDATE,
QUEUED -> PROCESSING) is the gate that lets exactly one replica run a job even when several
dispatch it, and the unique (key_id, idempotency_key) constraint settles concurrent submits.

Files: always in `jobs_dir`, which replicas must share (one volume: NFS, EFS, a ReadWriteMany
claim, or a host folder when they run on one host). Not bytea in PostgreSQL, because inputs
are images (megabytes each), kept for days: in the
database they would swell its WAL, backups and vacuum work, and every fetch of a result would
cross the database instead of being sent from a file (FileResponse). A file is written before
the row that names it (inputs before the INSERT; a result to a temporary name, renamed, then
the UPDATE), so a replica that can read a row finds its files.

Who runs a job: `mark_started` records the store that claimed it (`owner`). A job is taken
back by `recover` only when its owner is gone: with SQLite, any owner but this store (one
server per file, so another owner is an earlier process); with PostgreSQL, a replica that has
not renewed its lease (the `replicas` table, renewed by each `recover` call) for `lease_s`,
judged only by a replica that has itself renewed without a gap for that long, so an outage of
the database does not make live replicas look gone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from server.db import open_database
from server.serving.priority import BATCH, Priority

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
    created_at {float} NOT NULL,
    started_at {float},
    finished_at {float},
    inference_time {float},
    expires_at {float} NOT NULL,
    owner TEXT,
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    {priority},
    UNIQUE (key_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
PRIORITY_COLUMN = f"priority TEXT NOT NULL DEFAULT '{BATCH}'"  # in a store made before priorities, all was batch
PRIORITY_INDEX = "CREATE INDEX IF NOT EXISTS jobs_to_dispatch ON jobs (status, priority, created_at)"
REPLICAS_SCHEMA = """
CREATE TABLE IF NOT EXISTS replicas (
    owner TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
"""
log = logging.getLogger(__name__)
MAX_ATTEMPTS = 2
LEASE_S = 30.0  # shared store: a replica silent this long is gone (renewed every few seconds by JobRunner)
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
    priority: Priority = BATCH

    @property
    def metrics(self) -> dict:
        queue = (self.started_at or self.finished_at or time.time()) - self.created_at
        total = (self.finished_at or time.time()) - self.created_at
        return {
            "queue_time": round(queue, 3),
            "inference_time": round(self.inference_time or 0.0, 3),
            "total_time": round(total, 3),
        }


class DuplicateSubmit(Exception):
    def __init__(self, existing: JobRecord):
        super().__init__(existing.id)
        self.existing = existing


class JobStore:
    def __init__(self, folder: Path, database_url: str | None = None, *, lease_s: float = LEASE_S):
        """Rows in `folder`/jobs.sqlite3, or in PostgreSQL at `database_url`; files in `folder`/jobs either way."""
        self.folder = Path(folder)
        (self.folder / "jobs").mkdir(parents=True, exist_ok=True)
        self.owner = uuid.uuid4().hex[:16]  # this store's mark on the jobs it starts
        self.lease_s = lease_s
        self._last_renewal: float | None = None  # time.monotonic() of the last lease renewal
        self._steady_since = 0.0  # renewing without gaps since
        self.db = open_database(database_url, self.folder / "jobs.sqlite3", synchronous="NORMAL", name="segswap-jobs")
        self.shared = self.db.dialect == "postgres"
        schema = SCHEMA.format(float=self.db.float_type, priority=PRIORITY_COLUMN)
        if self.shared:
            added = f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {PRIORITY_COLUMN}"
            self.db.script(";".join((schema, REPLICAS_SCHEMA, added, PRIORITY_INDEX)))
            self.db.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS stored_bytes BIGINT NOT NULL DEFAULT 0")
            self._renew()
        else:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.script(schema)
            self._add_sqlite_columns()
            self.db.execute(PRIORITY_INDEX)

    def _add_sqlite_columns(self) -> None:
        """The columns a store made by an earlier version lacks."""
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}
        if "owner" not in columns:
            self.db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store made before replicas
        if "stored_bytes" not in columns:  # a store made before the per-key caps
            self.db.execute("ALTER TABLE jobs ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0")
        if "priority" not in columns:
            self.db.execute(f"ALTER TABLE jobs ADD COLUMN {PRIORITY_COLUMN}")

    def _db(self):
        return self.db

    def close(self) -> None:
        """Release the database (PostgreSQL: the pool, and this replica's lease, so its leftovers are taken at once)."""
        if self.shared and not self.db.pool.closed:
            try:
                self.db.execute("DELETE FROM replicas WHERE owner = ?", (self.owner,))
            except Exception:  # the database is out of reach: the lease lapses by itself
                log.warning("could not end this replica's lease", exc_info=True)
            finally:
                self.db.close()

    def job_dir(self, job_id: str) -> Path:
        return self.folder / "jobs" / job_id

    # -- writing ----------------------------------------------------------------------

    def create(
        self,
        key_id: str,
        params: dict,
        inputs: dict[str, bytes],
        retention_s: float,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        webhook_url: str | None = None,
        priority: Priority = BATCH,
    ) -> JobRecord:
        """Store the inputs, then the row; a repeated idempotency key raises DuplicateSubmit with the first job."""
        job_id = uuid.uuid4().hex
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True)
        for name, data in inputs.items():
            (folder / name).write_bytes(data)
        stored = sum(len(data) for data in inputs.values())
        now = time.time()
        try:
            self._db().execute(
                "INSERT INTO jobs (id, key_id, status, params, idempotency_key, body_hash, webhook_url, created_at, "
                "expires_at, stored_bytes, priority) VALUES (?, ?, 'QUEUED', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    key_id,
                    json.dumps(params),
                    idempotency_key,
                    body_hash,
                    webhook_url,
                    now,
                    now + retention_s,
                    stored,
                    priority,
                ),
            )
        except self.db.unique_violation:
            shutil.rmtree(folder, ignore_errors=True)
            raise DuplicateSubmit(self.find_idempotent(key_id, idempotency_key)) from None
        return self.get(job_id)

    def mark_started(self, job_id: str) -> bool:
        """QUEUED -> PROCESSING; False if the job is no longer QUEUED (cancelled meanwhile): do not run it."""
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'PROCESSING', attempts = attempts + 1, started_at = ?, owner = ?"
            " WHERE id = ? AND status = 'QUEUED'",
            (time.time(), self.owner, job_id),
        )
        return cursor.rowcount == 1

    def complete(self, job_id: str, result: bytes, extension: str, inference_time: float) -> None:
        name = f"result.{extension}"
        path = self.job_dir(job_id) / name
        path.with_suffix(".tmp").write_bytes(result)
        path.with_suffix(".tmp").replace(path)
        self._db().execute(
            "UPDATE jobs SET status = 'COMPLETED', result_file = ?, finished_at = ?, inference_time = ?, "
            "stored_bytes = stored_bytes + ? WHERE id = ?",
            (name, time.time(), inference_time, len(result), job_id),
        )

    def fail(self, job_id: str, error: str) -> bool:
        """QUEUED or PROCESSING -> FAILED; False if the job had already ended (nothing to refund twice)."""
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'FAILED', error = ?, finished_at = ? "
            "WHERE id = ? AND status IN ('QUEUED', 'PROCESSING')",
            (error, time.time(), job_id),
        )
        return cursor.rowcount == 1

    def cancel(self, job_id: str) -> bool:
        cursor = self._db().execute(
            "UPDATE jobs SET status = 'CANCELLED', finished_at = ? WHERE id = ? AND status = 'QUEUED'",
            (time.time(), job_id),
        )
        return cursor.rowcount == 1

    def recover(self) -> tuple[int, list[str]]:
        """After a restart: jobs caught PROCESSING go back to QUEUED once, or fail. Returns (requeued, failed ids).

        Only jobs whose owner is gone (see the module docstring); safe to call at any time, and
        with PostgreSQL it must be called every few seconds: it also renews this replica's lease.
        """
        gone = self._gone_owners()
        if gone is None:
            return 0, []
        clause, params = gone
        db = self._db()
        requeued = db.execute(
            "UPDATE jobs SET status = 'QUEUED', started_at = NULL, owner = NULL"
            f" WHERE status = 'PROCESSING' AND attempts < ? AND {clause}",
            (MAX_ATTEMPTS, *params),
        ).rowcount
        failed = db.execute(
            "UPDATE jobs SET status = 'FAILED', error = 'the job was interrupted twice by a server restart', "
            "finished_at = ?"
            f" WHERE status = 'PROCESSING' AND {clause} RETURNING id",
            (time.time(), *params),
        ).fetchall()
        return requeued, [row["id"] for row in failed]

    def _gone_owners(self) -> tuple[str, tuple] | None:
        """A condition on `owner` true for the jobs of gone owners, or None while this replica cannot judge yet."""
        if not self.shared:
            return "(owner IS NULL OR owner <> ?)", (self.owner,)
        now = self._renew()
        if time.monotonic() - self._steady_since < self.lease_s:
            return None
        self.db.execute("DELETE FROM replicas WHERE seen_at < ?", (now - 7 * 24 * 3600,))
        return "(owner IS NULL OR owner NOT IN (SELECT owner FROM replicas WHERE seen_at >= ?))", (now - self.lease_s,)

    def _renew(self) -> float:
        """Renew this replica's lease; the database's clock (Unix time), so replicas' clocks need not agree."""
        row = self.db.execute(
            "INSERT INTO replicas (owner, seen_at) VALUES (?, EXTRACT(EPOCH FROM clock_timestamp())::double precision)"
            " ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at RETURNING seen_at",
            (self.owner,),
        ).fetchone()
        renewed = time.monotonic()
        if self._last_renewal is None or renewed - self._last_renewal > self.lease_s / 2:
            self._steady_since = renewed  # a gap: others may have been cut off as long, so wait a lease to judge them
        self._last_renewal = renewed
        return row["seen_at"]

    def purge_expired(self) -> list[JobRecord]:
        """Delete the jobs past their retention; returns them (those still QUEUED never ran)."""
        now = time.time()
        expired = [_record(row) for row in self._db().execute("SELECT * FROM jobs WHERE expires_at < ?", (now,))]
        for record in expired:
            self.forget(record.id)
        return expired

    def forget(self, job_id: str) -> None:
        """Delete a job's files and row (retention over, or its output fetched under delete-on-fetch)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self._db().execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def usage(self, key_id: str) -> tuple[int, int]:
        """A key's stored jobs and bytes."""
        row = (
            self._db()
            .execute("SELECT COUNT(*) AS n, COALESCE(SUM(stored_bytes), 0) AS b FROM jobs WHERE key_id = ?", (key_id,))
            .fetchone()
        )
        return int(row["n"]), int(row["b"])

    # -- reading ----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def find_idempotent(self, key_id: str, idempotency_key: str | None) -> JobRecord | None:
        row = (
            self._db()
            .execute("SELECT * FROM jobs WHERE key_id = ? AND idempotency_key = ?", (key_id, idempotency_key))
            .fetchone()
        )
        return _record(row) if row else None

    def queued(self, exclude: set[str], limit: int, priority: Priority) -> list[JobRecord]:
        """The oldest `limit` jobs of class `priority` still QUEUED, but those in `exclude` (already dispatched)."""
        rows = self._db().execute(
            "SELECT * FROM jobs WHERE status = 'QUEUED' AND priority = ? ORDER BY created_at LIMIT ?",
            (priority, limit + len(exclude)),
        )
        return [_record(row) for row in rows if row["id"] not in exclude][:limit]

    def count_pending(self) -> int:
        return (
            self._db()
            .execute("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('QUEUED', 'PROCESSING')")
            .fetchone()["n"]
        )

    def load_inputs(self, job_id: str) -> dict[str, bytes]:
        """The inputs as they were received, those the job has (an erase has no object; a job whose files are
        gone has none, and fails when it is built)."""
        folder = self.job_dir(job_id)
        return {name: (folder / name).read_bytes() for name in INPUTS if (folder / name).is_file()}

    def result_path(self, record: JobRecord) -> Path | None:
        return self.job_dir(record.id) / record.result_file if record.result_file else None


def _record(row: dict) -> JobRecord:
    values = dict(row)
    values.pop("owner", None)
    values.pop("stored_bytes", None)
    values["params"] = json.loads(values["params"])
    return JobRecord(**values)


def open_job_store(settings) -> JobStore:
    """The job store the settings ask for: PostgreSQL if `database_url` is set, else SQLite in `jobs_dir`."""
    return JobStore(settings.jobs_dir, settings.database_url or None)

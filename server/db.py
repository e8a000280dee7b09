"""The small SQL layer under the job store and the credit ledger: embedded SQLite or shared PostgreSQL.

Callers write each statement once, in the SQL both databases accept (`?` placeholders,
`INSERT ... ON CONFLICT`, `UPDATE ... RETURNING`), and get back plain rows (dicts) with the
count of rows changed. What differs stays here:

- SQLite: a file next to the server, one connection per thread, autocommit. One server per file.
- PostgreSQL (`SEGSWAP_DATABASE_URL`): shared by every replica; a psycopg 3 connection pool
  (autocommit: each statement is its own transaction, as with SQLite), `?` turned into `%s`,
  schema creation serialised by an advisory lock so replicas starting together do not collide.

`unique_violation` is the exception an INSERT raises on a unique constraint, for callers that
turn it into something meaningful (the job store's idempotent replay).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from pathlib import Path

SCHEMA_LOCK = 0x5E65_5A11  # pg_advisory_xact_lock key held while a replica creates the tables


class Rows:
    """A statement's outcome, fetched before its connection went back: rows as dicts, and rows changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[dict], rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> dict | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[dict]:
        return self.rows

    def __iter__(self):
        return iter(self.rows)


class SQLiteDatabase:
    dialect = "sqlite"
    float_type = "REAL"
    unique_violation: type[Exception] = sqlite3.IntegrityError

    def __init__(self, path: Path | str, synchronous: str | None = None):
        self.path = str(path)
        self.synchronous = synchronous
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit: one statement each
            db.row_factory = sqlite3.Row
            if self.synchronous:
                db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.db = db
        return db

    def execute(self, sql: str, params: tuple | list = ()) -> Rows:
        cursor = self._connection().execute(sql, params)
        rows = [dict(row) for row in cursor.fetchall()] if cursor.description else []
        return Rows(rows, cursor.rowcount)

    def script(self, sql: str) -> None:
        self._connection().executescript(sql)

    def close(self) -> None:
        """Nothing to release: each thread's connection closes with the thread."""


class PostgresDatabase:
    dialect = "postgres"
    float_type = "DOUBLE PRECISION"  # REAL is 4 bytes in PostgreSQL: not enough for a Unix time

    def __init__(self, url: str, max_size: int, name: str, open_timeout_s: float = 30.0):
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise RuntimeError("SEGSWAP_DATABASE_URL needs psycopg: pip install 'segswap[postgres]'") from exc
        self.unique_violation = psycopg.errors.UniqueViolation
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            name=name,
            open=False,
            timeout=30.0,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=ConnectionPool.check_connection,  # a connection broken by a database restart is replaced, not used
        )
        self.pool.open(wait=True, timeout=open_timeout_s)  # an unreachable database fails the start, loudly

    def execute(self, sql: str, params: tuple | list = ()) -> Rows:
        with self.pool.connection() as connection:
            cursor = connection.execute(_placeholders(sql), params)
            rows = cursor.fetchall() if cursor.description else []
            return Rows(rows, cursor.rowcount)

    def script(self, sql: str) -> None:
        """Run `;`-separated statements in one transaction, one replica at a time."""
        with self.pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in sql.split(";"):
                if statement.strip():
                    connection.execute(statement)

    def close(self) -> None:
        self.pool.close()


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def open_database(
    database_url: str | None,
    sqlite_path: Path | str,
    *,
    synchronous: str | None = None,
    pool_size: int = 8,
    name: str = "segswap",
) -> SQLiteDatabase | PostgresDatabase:
    """PostgreSQL when `database_url` is set, else the SQLite file at `sqlite_path`."""
    if database_url:
        return PostgresDatabase(database_url, max_size=pool_size, name=name)
    return SQLiteDatabase(sqlite_path, synchronous=synchronous)

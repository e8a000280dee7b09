"""Credit balances in SQLite: an image costs credits only when it is delivered.

A request reserves its cost before it is queued (one atomic UPDATE that only succeeds
if the balance covers it, so concurrent requests can never overspend) and gets it back
if it fails. Keys without a row have no balance: they are not metered.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS credits (
    key_id TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
)
"""


class CreditLedger:
    def __init__(self, path: Path | str):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit: one statement each
            self._local.db = db
        return db

    def balance(self, key_id: str) -> int | None:
        row = self._connect().execute("SELECT balance FROM credits WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else row[0]

    def set_balance(self, key_id: str, balance: int) -> None:
        self._connect().execute(
            "INSERT INTO credits (key_id, balance) VALUES (?, ?) "
            "ON CONFLICT(key_id) DO UPDATE SET balance = excluded.balance",
            (key_id, balance),
        )

    def reserve(self, key_id: str, cost: int) -> int | None:
        """Take `cost` from the balance if it covers it: the balance left, or None if it does not."""
        row = self._connect().execute(
            "UPDATE credits SET balance = balance - ? WHERE key_id = ? AND balance >= ? RETURNING balance",
            (cost, key_id, cost),
        ).fetchone()
        return None if row is None else row[0]

    def refund(self, key_id: str, cost: int) -> int:
        row = self._connect().execute(
            "UPDATE credits SET balance = balance + ? WHERE key_id = ? RETURNING balance", (cost, key_id)
        ).fetchone()
        return row[0]

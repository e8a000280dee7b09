"""Credit balances in SQLite (or PostgreSQL, shared by replicas): an image costs credits only when it is delivered.

A request reserves its cost before it is queued (one atomic UPDATE that only succeeds
if the balance covers it, so concurrent requests can never overspend) and gets it back
if it fails. Keys without a row have no balance: they are not metered. With
`SEGSWAP_DATABASE_URL` the balances live in PostgreSQL, where the same conditional
UPDATE ... RETURNING keeps replicas that share a key from overspending it together.
"""

from __future__ import annotations

from pathlib import Path

from server.db import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS credits (
    key_id TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
)
"""


class CreditLedger:
    def __init__(self, path: Path | str, database_url: str | None = None):
        """Balances in the SQLite file at `path`, or in PostgreSQL at `database_url` (then `path` is not used)."""
        self.path = str(path)
        self._db = open_database(database_url, self.path, pool_size=4, name="segswap-credits")
        if self._db.dialect == "sqlite":
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.script(SCHEMA)

    def _connect(self):
        return self._db

    def close(self) -> None:
        self._db.close()

    def balance(self, key_id: str) -> int | None:
        row = self._connect().execute("SELECT balance FROM credits WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else row["balance"]

    def set_balance(self, key_id: str, balance: int) -> None:
        self._connect().execute(
            "INSERT INTO credits (key_id, balance) VALUES (?, ?) "
            "ON CONFLICT(key_id) DO UPDATE SET balance = excluded.balance",
            (key_id, balance),
        )

    def reserve(self, key_id: str, cost: int) -> int | None:
        """Take `cost` from the balance if it covers it: the balance left, or None if it does not."""
        row = (
            self._connect()
            .execute(
                "UPDATE credits SET balance = balance - ? WHERE key_id = ? AND balance >= ? RETURNING balance",
                (cost, key_id, cost),
            )
            .fetchone()
        )
        return None if row is None else row["balance"]

    def refund(self, key_id: str, cost: int) -> int:
        row = (
            self._connect()
            .execute("UPDATE credits SET balance = balance + ? WHERE key_id = ? RETURNING balance", (cost, key_id))
            .fetchone()
        )
        return row["balance"]


def open_ledger(settings) -> CreditLedger:
    """The ledger the settings ask for: PostgreSQL if `database_url` is set, else SQLite at `credits_db`."""
    return CreditLedger(settings.credits_db, settings.database_url or None)

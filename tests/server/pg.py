"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl in a temp folder, on a free port.

Uses the server binaries of Debian's `postgresql` package (scripts/install_postgres.sh), or those
in SEGSWAP_PG_BIN. PostgreSQL refuses to run as root, so under root it runs as the `postgres`
user (via runuser). Fast and unsafe on purpose (fsync off): the data dies with the test session.
Without binaries or psycopg the tests that need it are skipped, unless SEGSWAP_REQUIRE_POSTGRES=1
(for CI), which turns the skip into a failure.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from server.api.live_server import free_port

USER = "segswap"


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (they are not on PATH on Debian)."""
    if os.environ.get("SEGSWAP_PG_BIN"):
        chosen = Path(os.environ["SEGSWAP_PG_BIN"])
        return chosen if (chosen / "initdb").exists() else None
    candidates = [Path(path).parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if candidates:
        return max(candidates, key=lambda path: [int(n) for n in re.findall(r"\d+", path.parent.name)] or [0])
    on_path = shutil.which("initdb") and shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as") from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root = Path(
            tempfile.mkdtemp(prefix="segswap-pg-")
        )  # not under pytest's 0700 tmp: the postgres user reads it
        self.data, self.sockets, self.log = self.root / "data", self.root / "sockets", self.root / "server.log"
        self.sockets.mkdir()
        if owner is not None:
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        self._names = itertools.count(1)
        self.started = False

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.as_user, *args], check=False, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}{log}")

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        self.started = True

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database (one per test: nothing leaks between tests); its URL."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
                timeout=60,
            )
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def unavailable() -> str | None:
    """Why no test server can be started here, or None."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if find_bin_dir() is None:
        return "PostgreSQL server binaries not found (scripts/install_postgres.sh installs them)"
    return None


def start_or_skip() -> PostgresServer:
    reason = unavailable()
    if reason:
        if os.environ.get("SEGSWAP_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"SEGSWAP_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = PostgresServer(find_bin_dir())
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    return server

"""The database a test sidecar keeps its state in: SQLite or Postgres.

OUTRIGGER_TEST_STORE picks the store for the whole suite: `sqlite` (the
default) gives every sidecar a file in a pytest temporary directory;
`postgres` gives it a database of its own, created on the server named by
OUTRIGGER_TEST_POSTGRES_URL (tests/postgres.sh prints one) and dropped
afterwards. Databases are created and dropped with the `psql` client, which
comes with every Postgres installation, so the suite needs no Python driver.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

STORES = ("sqlite", "postgres")


def store_kind() -> str:
    kind = os.environ.get("OUTRIGGER_TEST_STORE", "sqlite").strip().lower() or "sqlite"
    if kind not in STORES:
        raise RuntimeError(f"OUTRIGGER_TEST_STORE={kind!r}: expected one of {', '.join(STORES)}")
    return kind


def on_postgres() -> bool:
    return store_kind() == "postgres"


# For modules that only make sense with several sidecars on one Postgres.
postgres_only = pytest.mark.skipif(
    not on_postgres(), reason="Postgres only: run with OUTRIGGER_TEST_STORE=postgres")


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class SqliteDatabase:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"

    def drop(self) -> None:
        # The file lives in a pytest temporary directory, which pytest prunes itself.
        pass


class PostgresDatabase:
    """A freshly created database on the test server; `drop()` removes it."""

    def __init__(self, label: str):
        admin = os.environ.get("OUTRIGGER_TEST_POSTGRES_URL", "")
        if not admin:
            raise RuntimeError(
                "OUTRIGGER_TEST_STORE=postgres needs OUTRIGGER_TEST_POSTGRES_URL; "
                "tests/postgres.sh prints one")
        self.admin_url = admin
        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:30]
        # Unique per sidecar and run; Postgres names are at most 63 bytes.
        self.name = f"outrigger_{slug}_{uuid.uuid4().hex[:12]}"
        psql(admin, f'CREATE DATABASE "{self.name}"')
        self._dropped = False
        _created.append(self)
        parts = urlsplit(admin)
        self.url = urlunsplit((parts.scheme, parts.netloc, f"/{self.name}", parts.query, parts.fragment))

    def drop(self) -> None:
        if self._dropped:
            return
        # FORCE ends the sessions of a sidecar that was killed rather than stopped. Best
        # effort: an autovacuum worker in the database can refuse to be ended for a moment,
        # and a leftover test database is not a test failure.
        try:
            psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except RuntimeError as e:
            print(f"left database {self.name} behind: {e}")
        self._dropped = True


Database = SqliteDatabase | PostgresDatabase
_created: list[PostgresDatabase] = []


def new_database(label: str, directory: Path) -> Database:
    """A fresh, empty database for one sidecar (or for several that share it)."""
    if on_postgres():
        return PostgresDatabase(label)
    return SqliteDatabase(Path(directory) / f"{label}.db")


def drop_leftover_databases() -> None:
    """Best effort, at exit: databases of tests that ended before their own cleanup."""
    for db in _created:
        try:
            db.drop()
        except Exception:
            pass


def psql(url: str, sql: str, timeout: float = 60.0) -> str:
    """Run one statement with the psql client and return its unaligned output."""
    try:
        done = subprocess.run(
            ["psql", url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    except FileNotFoundError as e:
        raise RuntimeError("the psql client is needed for the Postgres tests (tests/postgres.sh installs it)") from e
    if done.returncode != 0:
        raise RuntimeError(f"psql {redact(url)} -c {sql!r} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()

"""Fixtures for a real PostgreSQL server (see scripts/postgres.sh).

``pg_server`` (session scope) starts a throwaway cluster on 127.0.0.1 with
``scripts/postgres.sh`` in a directory of its own (so a developer's cluster, started by hand with
the same script, and other test sessions' clusters are left alone), and stops it, data removed,
at the end of the session.
``pg_url`` is its URL (database ``txfast``). Set ``TXFAST_PG_URL=postgresql://…`` to run the
tests against an existing server instead; that one is never stopped or restarted, and its user
needs the CREATEDB privilege.

``pg_database`` gives each test a fresh, empty database (dropped afterwards), so store tests
never see each other's rows.

If no server can be had, the tests that need one fail when ``CI=true`` (a service the suite
needs must not silently turn into skips there) and are skipped otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"
"""The script that installs, starts and stops the development cluster."""

START_TIMEOUT_S = 900
"""Limit for one ``postgres.sh start``: the first one may install the server with apt-get."""


def _unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) a test whose server cannot be had.

    Args:
        reason: Why there is no server; shown in the test report.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL unavailable: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def _state_base() -> str:
    tag = hashlib.sha256(str(SCRIPT).encode()).hexdigest()[:8]
    return f"txfast-pg-{os.getuid()}-pytest-{tag}-"


def _state_dir() -> Path:
    """The cluster directory of the session's server.

    One per checkout and test session (the pid), so that concurrent sessions never share or
    stop each other's server. It is under /tmp by default: as root the server runs as the
    ``postgres`` user, which must be able to reach it.

    Returns:
        A path under the system's temporary directory.
    """
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"{_state_base()}{os.getpid()}"


def _stale_state_dirs() -> list[Path]:
    """Clusters left behind by interrupted sessions of this checkout (their pid is gone)."""
    stale = []
    for path in Path(os.environ.get("TMPDIR", "/tmp")).glob(f"{_state_base()}*"):
        pid = path.name.removeprefix(_state_base())
        if not path.is_dir() or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.append(path)
        except PermissionError:  # alive, another user's
            pass
    return stale


def database_url(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname``.

    Args:
        url: A ``postgresql://`` URL.
        dbname: The database name.

    Returns:
        The new URL (user, host, port and query parameters kept).
    """
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


class PgServer:
    """A PostgreSQL server the tests can reach: started by ``scripts/postgres.sh`` or external.

    Attributes:
        url: ``postgresql://USER@HOST:PORT/DBNAME`` of the server's main database.
        external: True for a server named by ``TXFAST_PG_URL`` (never stopped).
        state_dir: The managed cluster's directory (data, socket, log); None if external.
    """

    def __init__(self, url: str, *, external: bool, state_dir: Path | None = None):
        self.url = url
        self.external = external
        self.state_dir = state_dir

    def __repr__(self) -> str:
        kind = "external" if self.external else f"managed in {self.state_dir}"
        return f"PgServer({self.url!r}, {kind})"

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A new autocommit psycopg connection.

        Args:
            dbname: Database to connect to (default: the server's main database).
            **kwargs: More ``psycopg.connect`` arguments.

        Returns:
            A ``psycopg.Connection``; close it (or use it as a context manager).
        """
        import psycopg

        url = self.url if dbname is None else database_url(self.url, dbname)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(url, autocommit=True, **kwargs)

    def script_env(self) -> dict[str, str]:
        """The environment for running ``scripts/postgres.sh`` on the managed cluster.

        Returns:
            A copy of ``os.environ`` with the cluster directory set.
        """
        env = dict(os.environ)
        env["TXFAST_PG_DIR"] = str(self.state_dir or _state_dir())
        return env

    def run_script(
        self, *args: str, timeout: float = START_TIMEOUT_S
    ) -> subprocess.CompletedProcess:
        """Run ``scripts/postgres.sh`` with ``args`` on this server's cluster directory.

        Args:
            *args: The command and its options, e.g. ``"stop", "--keep"``.
            timeout: Seconds before the script is abandoned.

        Returns:
            The completed process (text stdout and stderr); the caller checks the exit code.
        """
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=self.script_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _require_managed(self) -> None:
        if self.external:
            pytest.skip("the server is external (TXFAST_PG_URL): not restarted by tests")

    def stop(self, keep: bool = True) -> None:
        """Stop the managed server (fast shutdown).

        Args:
            keep: Keep its data and port for :meth:`start` (the default); False discards them.

        Raises:
            RuntimeError: If the script fails.
        """
        self._require_managed()
        proc = self.run_script("stop", *(["--keep"] if keep else []), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"postgres.sh stop failed:\n{proc.stderr}")

    def start(self) -> str:
        """Start the managed server again, on the data and port kept by ``stop(keep=True)``.

        Returns:
            The URL (the same as before a kept stop).

        Raises:
            RuntimeError: If the script fails.
        """
        self._require_managed()
        proc = self.run_script("start")
        if proc.returncode != 0:
            raise RuntimeError(f"postgres.sh start failed:\n{proc.stderr}")
        self.url = proc.stdout.strip().splitlines()[-1]
        return self.url


def _check_client() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        _unavailable(f"the psycopg client is not installed ({exc})")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (started on first use, stopped at the end).

    Yields:
        The server; ``.url`` is its URL.
    """
    _check_client()
    external = os.environ.get("TXFAST_PG_URL", "").strip()
    if external:
        if not external.startswith(("postgresql://", "postgres://")):
            _unavailable(f"TXFAST_PG_URL={external!r} is not a postgresql:// URL")
        server = PgServer(external, external=True)
        try:
            with server.connect() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:  # psycopg.OperationalError: no server answered
            _unavailable(f"TXFAST_PG_URL={external} does not answer: {exc}")
        yield server
        return

    for path in _stale_state_dirs():
        # A cluster left behind by an interrupted session of this checkout: discard it.
        PgServer("", external=False, state_dir=path).run_script("stop", timeout=120)
    server = PgServer("", external=False, state_dir=_state_dir())
    try:
        proc = server.run_script("start")
    except FileNotFoundError as exc:  # no bash
        _unavailable(str(exc))
    except subprocess.TimeoutExpired:
        server.run_script("stop", timeout=120)
        _unavailable(f"scripts/postgres.sh start took more than {START_TIMEOUT_S} s")
    if proc.returncode != 0:
        _unavailable(f"scripts/postgres.sh start exited {proc.returncode}:\n{proc.stderr.strip()}")
    server.url = proc.stdout.strip().splitlines()[-1]
    try:
        yield server
    finally:
        proc = server.run_script("stop", timeout=120)
        if proc.returncode != 0:
            print(f"postgres.sh stop failed:\n{proc.stderr}", file=sys.stderr)


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """The URL of the session's server (its main database, shared by all tests)."""
    return pg_server.url


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards.

    Yields:
        Its ``postgresql://`` URL.
    """
    from psycopg import sql

    name = f"test_{uuid.uuid4().hex[:16]}"
    try:
        with pg_server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except Exception as exc:  # psycopg.Error: server gone or no CREATEDB privilege
        _unavailable(f"cannot create a test database on {pg_server.url}: {exc}")
    yield database_url(pg_server.url, name)
    try:
        with pg_server.connect() as conn:
            # FORCE: connections a failed test left open must not keep the database alive.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except Exception as exc:  # best effort: the test may have stopped the server
        print(f"could not drop test database {name}: {exc}", file=sys.stderr)


STORE_BACKENDS = ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""Both store backends; PostgreSQL tests carry the ``postgres`` mark."""


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty store of each backend (a DuckDB file, a PostgreSQL database)."""
    if request.param == "duckdb":
        return f"duckdb:{tmp_path / 's.duckdb'}"
    return str(request.getfixturevalue("pg_database"))

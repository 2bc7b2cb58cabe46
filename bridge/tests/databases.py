"""Real databases for the tests: a MariaDB server of the tests' own, and SQLite files.

The MariaDB server is Debian's ``mariadbd`` on a free port with a data directory under the
test session's temporary directory, started once per session; each test gets a database of its
own on it, made from the reference ``schema.sql``. SQLite gets ``schema.sqlite.sql``.
"""

from __future__ import annotations

import getpass
import itertools
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from harness import free_port
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

BRIDGE = Path(__file__).resolve().parents[1]
"""The bridge's project folder (schema files)."""


class MariaDBServer:
    """``mariadbd`` with a data directory of its own, reachable on 127.0.0.1 without a password."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.log = workdir / "mariadb.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def install(self) -> None:
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if installer is None or shutil.which("mariadbd", path="/usr/sbin:/usr/bin") is None:
            pytest.fail("MariaDB is not installed: apt-get install mariadb-server (or .ci/test)")
        subprocess.run(
            [
                installer,
                # Not the machine's /etc/mysql settings (its user, its log file): our own.
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--user={getpass.getuser()}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
        assert mariadbd is not None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    mariadbd,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.workdir / 'mariadb.sock'}",
                    f"--pid-file={self.workdir / 'mariadb.pid'}",
                    f"--user={getpass.getuser()}",
                    # A test server on loopback: no accounts to set up, and little memory.
                    "--skip-grant-tables",
                    "--innodb-buffer-pool-size=32M",
                    "--skip-log-bin",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root").close()
                return
            except pymysql.err.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MariaDB did not start; its log:\n{self.log.read_text()}")
                time.sleep(0.1)

    def stop(self, kill: bool = False) -> None:
        if self.process is not None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(30)
            self.process = None

    def questions(self) -> int:
        """MariaDB's ``Questions`` counter: the statements clients have sent."""
        connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
        try:
            with connection.cursor() as cursor:
                cursor.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
                row = cursor.fetchone()
                assert row is not None
                return int(row[1])
        finally:
            connection.close()

    def new_database(self) -> str:
        """A fresh database with the reference schema; returns its async URL."""
        name = f"vwed_{next(self._names)}"
        connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
                cursor.execute(f"USE {name}")
                for statement in _statements((BRIDGE / "schema.sql").read_text()):
                    cursor.execute(statement)
            connection.commit()
        finally:
            connection.close()
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{name}"


def _statements(script: str) -> list[str]:
    """The statements of a SQL script without comments (a comment may hold a semicolon)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def new_sqlite_database(path: Path) -> str:
    """A SQLite file with the reference schema; returns its async URL."""
    with sqlite3.connect(path) as connection:
        connection.executescript((BRIDGE / "schema.sqlite.sql").read_text())
        # Readers and a writer at once: the bridge polls while the test writes.
        connection.execute("PRAGMA journal_mode=WAL")
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    server.install()
    server.start()
    yield server
    server.stop()


class Site:
    """A site's database as its engines write it: plain SQL, in transactions of their own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(text(sql), params)

    async def add_location(
        self, scene_id: str, id: str, station: str, layer: int, **fields: Any
    ) -> None:
        values = {
            "id": id,
            "layer_index": layer,
            "layer_name": f"{station}-{layer}",
            "station_name": station,
            "scene_id": scene_id,
            "storage_area_id": "area-1",
            **fields,
        }
        columns = ", ".join(values)
        placeholders = ", ".join(f":{name}" for name in values)
        await self.execute(
            f"INSERT INTO vwed_storage_location ({columns}) VALUES ({placeholders})", **values
        )

    async def set_location(self, scene_id: str, id: str, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        await self.execute(
            f"UPDATE vwed_storage_location SET {assignments} WHERE scene_id = :s AND id = :i",
            s=scene_id,
            i=id,
            **fields,
        )

    async def add_result(self, task_record_id: str, context: str, status: str = "RUNNING") -> None:
        await self.execute(
            "INSERT INTO vwed_task_result (task_record_id, created_at, context, status) "
            "VALUES (:t, :c, :x, :s)",
            t=task_record_id,
            c="2025-06-11 12:00:00.000",
            x=context,
            s=status,
        )

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as connection:
            result = await connection.execute(text(sql), params)
            return [dict(row) for row in result.mappings().all()]

    async def close(self) -> None:
        await self.engine.dispose()

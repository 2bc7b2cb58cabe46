"""Fixtures: a nats-server, the real hub, a real database (SQLite and MariaDB), the bridge.

The nats-server and hub come from the SDK's test harness (``publisher-sdk/python/tests``), put
on ``sys.path`` here rather than copied.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "publisher-sdk" / "python" / "tests"))
pytest.register_assert_rewrite("harness", "databases", "processes", "proxy")

from databases import MariaDBServer, Site, new_sqlite_database  # noqa: E402

pytest_plugins = ["harness", "databases"]


@pytest.fixture(params=["sqlite", "mariadb"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    """An empty site database with the reference schema: a SQLite file, then MariaDB."""
    if request.param == "sqlite":
        url = new_sqlite_database(tmp_path / "site.db")
    else:
        server: MariaDBServer = request.getfixturevalue("mariadb")
        url = server.new_database()
    database = Site(url)
    yield database
    await database.close()

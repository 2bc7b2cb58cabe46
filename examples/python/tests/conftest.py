"""Fixtures: a nats-server, the real hub, and the storage service as a separate process.

The servers come from the SDK's test harness (``publisher-sdk/python/tests/harness.py``), put on
``sys.path`` here rather than copied.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[3] / "publisher-sdk" / "python" / "tests"))
# Imported below before pytest_plugins registers it: have its asserts rewritten all the same.
pytest.register_assert_rewrite("harness", "servers")

import httpx  # noqa: E402 - after the rewrite registration above
from harness import NatsServer  # noqa: E402
from servers import StorageServiceProcess  # noqa: E402

# The nats_server and hub fixtures, shared with the other Python suites.
pytest_plugins = ["harness"]


@pytest.fixture
async def storage(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[StorageServiceProcess]:
    """The storage service on an empty database of its own, without a demo scene."""
    service = StorageServiceProcess(tmp_path, nats_server.url, tmp_path / "storage.db")
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def http(storage: StorageServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the storage service's HTTP API, as a warehouse system would call it."""
    async with httpx.AsyncClient(base_url=storage.url, timeout=10) as client:
        yield client

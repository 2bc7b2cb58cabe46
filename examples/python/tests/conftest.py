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

import httpx
from harness import Hub, NatsServer
from servers import StorageServiceProcess


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hub(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Hub]:
    hub = Hub(tmp_path, nats_server.url)
    await hub.start()
    yield hub
    await hub.stop()


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

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from harness import Hub, NatsServer
from nats.aio.client import Client

from vwed_publisher import Publisher


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
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A plain NATS connection: the test's own eyes on the wire."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def publisher(nats_server: NatsServer) -> AsyncIterator[Publisher]:
    pub = await Publisher.connect(nats_server.url)
    yield pub
    await pub.close()

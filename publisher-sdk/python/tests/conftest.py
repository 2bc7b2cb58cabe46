from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import nats
import pytest
from nats.aio.client import Client

from vwed_publisher import Publisher

if TYPE_CHECKING:
    from harness import NatsServer

# The nats_server and hub fixtures, shared with the other Python suites.
pytest_plugins = ["harness"]


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

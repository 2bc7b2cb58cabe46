"""nats-py writes a flush's PING ahead of what it still buffers: "flushed" must mean it anyway."""

from __future__ import annotations

import nats.errors
import pytest
from nats.aio.client import Client

from vwed_publisher import Publisher, TaskResult, TaskSnapshot, TaskStatus


async def test_a_responder_answers_as_soon_as_serve_returns(
    nc: Client, publisher: Publisher
) -> None:
    misses = 0
    for n in range(300):
        responder = await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 1, []))
        try:
            await nc.request(f"vwed.snapshot.task.t-{n}", b"", timeout=2)
        except nats.errors.NoRespondersError:
            misses += 1
        await responder.stop()
    assert misses == 0, f"{misses} of 300 requests found no responder right after serve"


async def test_flush_pings_the_server_after_what_was_published(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looks at the bytes nats-py writes (its transport is not public): the PING whose PONG
    # flush waits for must follow the events, or the server may answer before reading them.
    publisher = Publisher(nc, tip_interval=None)
    transport = nc._transport
    assert transport is not None
    written: list[bytes] = []
    write, writelines = transport.write, transport.writelines

    def record_write(payload: bytes) -> None:
        written.append(bytes(payload))
        write(payload)

    def record_writelines(payloads: list[bytes]) -> None:
        written.extend(bytes(payload) for payload in payloads)
        writelines(payloads)

    monkeypatch.setattr(transport, "write", record_write)
    monkeypatch.setattr(transport, "writelines", record_writelines)
    result = TaskResult("2025-06-11T12:00:00.000Z", "x", TaskStatus.RUNNING)
    await publisher.append_task_results("t-1", 0, [result])
    await publisher.flush()
    kinds = [chunk[:4] for chunk in written]
    assert b"PUB " in kinds
    assert b"PING" in kinds[kinds.index(b"PUB ") :], kinds

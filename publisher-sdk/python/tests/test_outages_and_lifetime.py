"""A NATS outage, closing, and the publisher's own tasks: nothing lost unnoticed, nothing left."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings
from pathlib import Path

import nats
import nats.errors
import pytest
from harness import NatsServer
from nats.aio.client import Client
from test_on_the_wire import record, running

from vwed_publisher import BlockingPublisher, Publisher, TaskSnapshot
from vwed_publisher.tips import RecentKeys


async def test_keys_published_before_a_long_outage_are_tipped_when_nats_comes_back(
    nats_server: NatsServer,
) -> None:
    # The key's event may have been lost with the connection, so it must be tipped after the
    # reconnect even though the outage lasted longer than the tip window.
    observer = await nats.connect(
        nats_server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1
    )
    wire = await record(observer, "vwed.task.>")
    publisher = await Publisher.connect(
        nats_server.url, tip_interval=60.0, tip_window=0.5, reconnect_time_wait=0.3
    )
    rev = await publisher.append_task_results("t-1", 0, [running("before")])
    await publisher.flush()
    await wire.wait_for(1)

    await nats_server.stop()
    await asyncio.sleep(1.2)
    await nats_server.start()
    await wire.wait_for(2, timeout=10)
    assert wire.messages[1] == (
        "vwed.task.t-1.execution",
        {"task_record_id": "t-1", "rev": rev, "op": "tip"},
    )
    await publisher.close()
    await observer.close()


async def test_flush_during_an_outage_waits_for_nats_instead_of_pretending(
    nats_server: NatsServer,
) -> None:
    publisher = await Publisher.connect(nats_server.url, reconnect_time_wait=0.1)
    await publisher.append_task_results("t-1", 0, [running("before")])
    await publisher.flush()
    await nats_server.stop()
    await asyncio.sleep(0.3)
    await publisher.append_task_results("t-1", 1, [running("buffered")])
    # Nothing can reach the server: flush must not report that it did.
    started = time.monotonic()
    with pytest.raises(nats.errors.FlushTimeoutError):
        await publisher.flush(timeout=0.5)
    assert time.monotonic() - started >= 0.45

    # Once NATS is back within the timeout, flush returns and the buffered event is there.
    await nats_server.start()
    observer = await nats.connect(nats_server.url)
    wire = await record(observer, "vwed.task.>")
    await publisher.flush(timeout=10)
    await publisher.append_task_results("t-1", 2, [running("after")])
    await publisher.flush()
    await wire.wait_for(1)
    await publisher.close()
    await observer.close()


async def test_close_during_an_outage_does_not_raise_and_says_what_is_dropped(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = await Publisher.connect(nats_server.url, reconnect_time_wait=0.2)
    await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 1, []))
    await publisher.append_task_results("t-1", 0, [running("before")])
    await publisher.flush()
    await nats_server.stop()
    await asyncio.sleep(0.3)
    await publisher.append_task_results("t-1", 1, [running("buffered")])
    with caplog.at_level(logging.WARNING, logger="vwed_publisher"):
        await asyncio.wait_for(publisher.close(), 5)
    assert "NATS is unreachable" in caplog.text
    assert publisher.nc.is_closed


async def test_a_publish_that_ends_after_close_does_not_start_tipping(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(nc, tip_interval=0.05)
    release = asyncio.Event()
    original = nc.publish

    async def slow_publish(subject: str, payload: bytes = b"", **kwargs: object) -> None:
        await original(subject, payload)
        await release.wait()  # nats-py waiting on a full buffer, say

    monkeypatch.setattr(nc, "publish", slow_publish)
    first = asyncio.create_task(publisher.append_task_results("t-1", 0, [running("x")]))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(publisher.close())
    await asyncio.sleep(0.05)
    release.set()
    await first
    await closing
    monkeypatch.undo()
    await asyncio.sleep(0.1)
    assert publisher._tipper is None or publisher._tipper.done()


async def test_without_tips_no_key_is_remembered(publisher: Publisher) -> None:
    quiet = Publisher(publisher.nc, tip_interval=None)
    for n in range(100):
        await quiet.append_task_results(f"t-{n}", 0, [running("x")])
    assert len(quiet._recent) == 0
    await quiet.close()


async def test_the_tip_loop_survives_an_error_and_ends_with_its_connection(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await nats.connect(nats_server.url)
    wire = await record(nc, "vwed.task.>")
    publisher = Publisher(nc, tip_interval=0.1)
    failures = 0
    due = RecentKeys.due

    def failing_once(self: RecentKeys, now: float) -> list[tuple[str, bytes]]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bug in the bookkeeping")
        return due(self, now)

    monkeypatch.setattr(RecentKeys, "due", failing_once)
    with caplog.at_level(logging.ERROR, logger="vwed_publisher"):
        await publisher.append_task_results("t-1", 0, [running("x")])
        await wire.wait_for(3)
    assert "a bug in the bookkeeping" in caplog.text
    assert [p.get("op") for _, p in wire.messages[1:3]] == ["tip", "tip"]

    # The service closes its own connection and forgets the publisher: the loop ends anyway.
    await nc.close()
    assert publisher._tipper is not None
    await asyncio.wait_for(publisher._tipper, 2)


async def test_serving_on_a_closed_publisher_raises(publisher: Publisher) -> None:
    await publisher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.serve_task_snapshots(lambda id: None)


def test_a_blocking_call_that_times_out_is_cancelled_not_sent_later(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = NatsServer(tmp_path)
        await server.start()
        try:
            observer = await nats.connect(server.url)
            wire = await record(observer, "vwed.task.>")

            def in_thread() -> None:
                bp = BlockingPublisher.connect(server.url, timeout=0.3)
                lock = bp.publisher._in_rev_order

                async def hold() -> None:
                    async with lock:
                        await asyncio.sleep(1.0)

                held = asyncio.run_coroutine_threadsafe(hold(), bp._loop.loop)
                time.sleep(0.05)
                with pytest.raises(TimeoutError):
                    bp.append_task_results("t-1", 0, [running("late")])
                held.result(5)
                bp.flush()
                bp.close()
                assert not [t for t in threading.enumerate() if t.name == "vwed-publisher"]

            await asyncio.to_thread(in_thread)
            await asyncio.sleep(0.3)
            assert wire.messages == []
            await observer.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


async def test_publishing_does_not_wait_for_a_round_of_many_tips(
    nats_server: NatsServer,
) -> None:
    publisher = await Publisher.connect(nats_server.url, tip_interval=3600)
    for n in range(20_000):
        await publisher.append_task_results(f"t-{n}", 0, [running("x")])
    await publisher.flush()
    # A round after a reconnect, which tips every key at once.
    tipping = asyncio.create_task(publisher._send_tips(publisher._recent.every(time.monotonic())))
    await asyncio.sleep(0)
    await publisher.append_task_results("t-new", 0, [running("y")])
    assert not tipping.done(), "the publish waited for the whole round of tips"
    await tipping
    await publisher.close()


def test_a_closed_blocking_publisher_says_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = NatsServer(tmp_path)
        await server.start()
        try:

            def in_thread() -> None:
                bp = BlockingPublisher.connect(server.url)
                responder = bp.serve_task_snapshots(lambda id: None)
                bp.close()
                bp.close()
                responder.stop()  # stopped by close already: nothing to do, nothing raised
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # no "coroutine ... was never awaited"
                    with pytest.raises(RuntimeError, match="closed"):
                        bp.append_task_results("t-1", 0, [running("x")])
                    gc.collect()

            await asyncio.to_thread(in_thread)
        finally:
            await server.stop()

    asyncio.run(scenario())

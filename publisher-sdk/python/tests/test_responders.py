"""Snapshot responders, asked the way a hub asks: a request on the key's snapshot subject."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import nats.errors
import pytest
from harness import NatsServer, cargo_binary, stop_process
from nats.aio.client import Client

from vwed_publisher import (
    BlockingPublisher,
    Publisher,
    SceneSnapshot,
    StorageLocation,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)

RESULT = TaskResult("2025-06-11T12:00:00.000Z", "answered by python", TaskStatus.RUNNING)


async def ask(nc: Client, subject: str, timeout: float = 2.0) -> dict[str, Any]:
    reply = await nc.request(subject, b"", timeout=timeout)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_a_coroutine_handler_answers_found_and_not_found(
    nc: Client, publisher: Publisher
) -> None:
    async def handler(task_record_id: str) -> TaskSnapshot | None:
        return TaskSnapshot(task_record_id, 7, [RESULT]) if task_record_id != "gone" else None

    await publisher.serve_task_snapshots(handler)
    assert await ask(nc, "vwed.snapshot.task.~YS5i") == {
        "found": True,
        "task_record_id": "a.b",
        "rev": 7,
        "results": [
            {
                "created_at": "2025-06-11T12:00:00.000Z",
                "context": "answered by python",
                "status": "RUNNING",
            }
        ],
    }
    assert await ask(nc, "vwed.snapshot.task.gone") == {"found": False}


async def test_a_plain_handler_answers_scenes(nc: Client, publisher: Publisher) -> None:
    location = StorageLocation(
        id="L-1",
        layer_index=1,
        layer_name="A-1",
        station_name="A",
        scene_id="s-1",
        storage_area_id="area",
    )
    await publisher.serve_scene_snapshots(lambda id: SceneSnapshot(id, 3, [location]))
    answer = await ask(nc, "vwed.snapshot.scene.s-1")
    assert answer["found"] is True
    assert answer["rev"] == 3
    assert answer["storage_locations"][0]["layer_name"] == "A-1"
    assert len(answer["storage_locations"][0]) == 27


async def test_a_handler_that_raises_is_logged_and_answers_nothing(
    nc: Client, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(task_record_id: str) -> TaskSnapshot | None:
        if task_record_id == "broken":
            raise RuntimeError("the database is down")
        return TaskSnapshot(task_record_id, 1, [])

    await publisher.serve_task_snapshots(handler)
    with (
        caplog.at_level(logging.WARNING, logger="vwed_publisher"),
        pytest.raises(nats.errors.TimeoutError),
    ):
        await ask(nc, "vwed.snapshot.task.broken", timeout=0.5)
    assert "snapshot handler failed for 'broken'; the hub will retry" in caplog.text
    assert "the database is down" in caplog.text
    # The responder goes on serving.
    assert (await ask(nc, "vwed.snapshot.task.fine"))["found"] is True


async def test_wrong_answers_are_never_sent(
    nc: Client, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(task_record_id: str) -> Any:
        if task_record_id == "other":
            return TaskSnapshot("not-other", 1, [])
        if task_record_id == "scene":
            return SceneSnapshot(task_record_id, 1, [])
        return TaskSnapshot(task_record_id, -5, [])

    await publisher.serve_task_snapshots(handler)
    with caplog.at_level(logging.ERROR, logger="vwed_publisher"):
        for key in ["other", "scene", "negative"]:
            with pytest.raises(nats.errors.TimeoutError):
                await ask(nc, f"vwed.snapshot.task.{key}", timeout=0.3)
    assert "answered for 'not-other'; not sent" in caplog.text
    assert "returned SceneSnapshot, not TaskSnapshot or None" in caplog.text
    assert "unsigned 64-bit" in caplog.text


async def test_slow_handlers_do_not_hold_up_others_or_publishing(
    nc: Client, publisher: Publisher
) -> None:
    def blocking_handler(task_record_id: str) -> TaskSnapshot:
        if task_record_id == "slow":
            time.sleep(1.0)  # a database that takes its time, in the executor
        return TaskSnapshot(task_record_id, 1, [])

    await publisher.serve_task_snapshots(blocking_handler)
    slow = asyncio.create_task(ask(nc, "vwed.snapshot.task.slow", timeout=5))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert (await ask(nc, "vwed.snapshot.task.fast"))["found"] is True
    await publisher.append_task_results("fast", 0, [RESULT])
    assert time.monotonic() - started < 0.5
    assert not slow.done()
    assert (await slow)["task_record_id"] == "slow"


async def test_one_responder_answers_many_concurrent_requests_each_with_its_own_key(
    nc: Client, publisher: Publisher
) -> None:
    async def handler(task_record_id: str) -> TaskSnapshot:
        await asyncio.sleep(0.01)
        return TaskSnapshot(task_record_id, int(task_record_id.split("-")[1]), [])

    await publisher.serve_task_snapshots(handler)
    answers = await asyncio.gather(
        *(ask(nc, f"vwed.snapshot.task.t-{n}", timeout=10) for n in range(500))
    )
    assert [(a["task_record_id"], a["rev"]) for a in answers] == [(f"t-{n}", n) for n in range(500)]


async def test_stop_ends_serving(nc: Client, publisher: Publisher) -> None:
    responder = await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 1, []))
    assert (await ask(nc, "vwed.snapshot.task.t"))["found"] is True
    await responder.stop()
    assert not responder.is_serving
    with pytest.raises(nats.errors.NoRespondersError):
        await ask(nc, "vwed.snapshot.task.t", timeout=0.5)


async def test_a_blocking_publisher_serves_with_plain_functions(
    nats_server: NatsServer, nc: Client
) -> None:
    served_on: list[str] = []

    def handler(task_record_id: str) -> TaskSnapshot:
        served_on.append(threading.current_thread().name)
        return TaskSnapshot(task_record_id, 1, [])

    bp = await asyncio.to_thread(BlockingPublisher.connect, nats_server.url)
    responder = await asyncio.to_thread(bp.serve_task_snapshots, handler)
    assert (await ask(nc, "vwed.snapshot.task.t"))["found"] is True
    assert len(served_on) == 1
    assert served_on[0] != "vwed-publisher"
    await asyncio.to_thread(responder.stop)
    await asyncio.to_thread(bp.close)


async def test_rust_and_python_replicas_share_one_queue_group(
    nats_server: NatsServer, nc: Client, publisher: Publisher
) -> None:
    binary = cargo_binary(
        "vwed-test-responder",
        "VWED_TEST_RESPONDER_BIN",
        "cargo build -p vwed-e2e --bin vwed-test-responder",
    )
    rust = subprocess.Popen([str(binary), "--nats-url", nats_server.url], stdout=subprocess.PIPE)
    try:
        assert rust.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(rust.stdout.readline), 30)
        assert line == b"ready\n"
        await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 1, [RESULT]))

        # Count every reply, not just the first: each request must be answered exactly once.
        replies: Counter[str] = Counter()
        answered_by: Counter[str] = Counter()
        inbox = nc.new_inbox()

        async def on_reply(message: Any) -> None:
            answer = json.loads(message.data)
            replies[message.subject] += 1
            answered_by[answer["results"][0]["context"]] += 1

        await nc.subscribe(f"{inbox}.*", cb=on_reply)
        for n in range(200):
            await nc.publish(f"vwed.snapshot.task.t-{n}", b"", reply=f"{inbox}.{n}")
        deadline = time.monotonic() + 10
        while sum(replies.values()) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(replies) == 200
        assert set(replies.values()) == {1}
        assert answered_by["answered by rust"] > 0
        assert answered_by["answered by python"] > 0
        assert sum(answered_by.values()) == 200
    finally:
        await stop_process(rust)


async def test_a_responder_whose_start_failed_does_not_serve_on_unseen(
    nc: Client, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server is slow to confirm the subscription: serve raises, and hands back no
    # responder that could be stopped, so nothing may go on answering.
    async def slow_flush(timeout: int = 10) -> None:
        raise nats.errors.FlushTimeoutError

    monkeypatch.setattr(publisher.nc, "flush", slow_flush)
    with pytest.raises(nats.errors.FlushTimeoutError):
        await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 1, []))
    monkeypatch.undo()
    await publisher.flush()
    with pytest.raises(nats.errors.NoRespondersError):
        await ask(nc, "vwed.snapshot.task.t", timeout=0.5)

"""What the SDK puts on NATS, read with a plain subscription: order, refusals, tips."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import nats
import pytest
from harness import NatsServer
from nats.aio.client import Client
from nats.aio.msg import Msg

from vwed_publisher import (
    BlockingPublisher,
    LocationsRemove,
    LocationStatus,
    Publisher,
    StatusAction,
    StorageLocation,
    TaskAppend,
    TaskReplace,
    TaskResult,
    TaskStatus,
    derive_action,
)
from vwed_publisher.responder import flush_through


class Recorder:
    """A plain NATS subscription that keeps every message, parsed."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()

    async def handle(self, message: Msg) -> None:
        self.messages.append((message.subject, json.loads(message.data)))
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(self.messages)} of {count} messages arrived")
            await asyncio.wait_for(self.arrived.wait(), remaining)

    def payloads(self, subject: str, op: str | None = None) -> list[dict[str, Any]]:
        return [p for s, p in self.messages if s == subject and (op is None or p.get("op") == op)]


def occupied(location_id: str) -> LocationStatus:
    """The status of an occupied location, nothing else set."""
    return LocationStatus(
        id=location_id, is_occupied=True, is_locked=False, is_disabled=False, is_empty_tray=False
    )


async def record(nc: Client, subject: str) -> Recorder:
    recorder = Recorder()
    await nc.subscribe(subject, cb=recorder.handle)
    # One flush is not enough: nats-py may send its PING ahead of the SUB, and a publish on
    # another connection could then pass the subscription by (see flush_through).
    await flush_through(nc)
    return recorder


def running(context: str) -> TaskResult:
    return TaskResult.now(context, TaskStatus.RUNNING)


async def test_concurrent_coroutines_publish_a_key_in_rev_order(
    nc: Client, publisher: Publisher
) -> None:
    wire = await record(nc, "vwed.task.*.execution")
    tasks = [
        publisher.append_task_results(
            f"t-{n % 3}", n, [TaskResult.now(f"step {n}", TaskStatus.RUNNING)]
        )
        for n in range(300)
    ]
    revs = await asyncio.gather(*tasks)
    assert len(set(revs)) == 300
    await publisher.flush()
    await wire.wait_for(300)
    for key in ["t-0", "t-1", "t-2"]:
        seen = [p["rev"] for p in wire.payloads(f"vwed.task.{key}.execution")]
        assert len(seen) == 100
        assert seen == sorted(seen), f"{key}: revs out of order"
        assert len(set(seen)) == 100
        # However the coroutines interleaved, each event names the one before it.
        chain = [p.get("prev_rev") for p in wire.payloads(f"vwed.task.{key}.execution")]
        assert chain == [None, *seen[:-1]], key


async def test_many_threads_through_one_blocking_publisher_stay_in_rev_order(
    nats_server: NatsServer, nc: Client
) -> None:
    wire = await record(nc, "vwed.scene.s-1.storage")
    status = occupied("L-1")
    returned: list[int] = []
    lock = threading.Lock()

    def worker(bp: BlockingPublisher) -> None:
        for _ in range(50):
            rev = bp.status_change("s-1", "A-01-1", StatusAction.OCCUPY, status)
            with lock:
                returned.append(rev)

    def run_threads() -> None:
        with BlockingPublisher.connect(nats_server.url) as bp:
            threads = [threading.Thread(target=worker, args=(bp,)) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            bp.flush()

    await asyncio.to_thread(run_threads)
    await wire.wait_for(400)
    seen = [p["rev"] for p in wire.payloads("vwed.scene.s-1.storage")]
    assert seen == sorted(returned)
    assert len(set(seen)) == 400
    chain = [p.get("prev_rev") for p in wire.payloads("vwed.scene.s-1.storage")]
    assert chain == [None, *seen[:-1]]


@pytest.mark.parametrize(
    "bad_id", ["", "a" * 257, "仓" * 86, "a\x00b", "a\nb", "\tt", "a\x7f", "a\x85"]
)
async def test_an_invalid_id_raises_before_anything_is_sent(
    nc: Client, publisher: Publisher, bad_id: str
) -> None:
    wire = await record(nc, ">")
    status = LocationStatus(
        id="L", is_occupied=False, is_locked=False, is_disabled=False, is_empty_tray=False
    )
    calls = [
        publisher.append_task_results(bad_id, 0, [running("x")]),
        publisher.replace_task_results(bad_id, []),
        publisher.status_change(bad_id, "A-1", StatusAction.OCCUPY, status),
        publisher.upsert_locations(bad_id, []),
        publisher.remove_locations(bad_id, ["L"]),
        publisher.publish_task(TaskAppend(bad_id, 1, 0, [])),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="an id must"):
            await call
    # A valid publish afterwards is the first and only message on the wire.
    await publisher.append_task_results("ok", 0, [running("x")])
    await publisher.flush()
    await wire.wait_for(1)
    await asyncio.sleep(0.1)
    assert [s for s, _ in wire.messages] == ["vwed.task.ok.execution"]


async def test_bad_values_raise_a_clear_error(publisher: Publisher) -> None:
    with pytest.raises(ValueError, match="DONE"):
        TaskResult("2025-06-11T12:00:00.000Z", "x", "DONE")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"LocationStatus\.is_occupied must be bool"):
        LocationStatus("L", 1, False, False, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="results must hold TaskResult"):
        await publisher.append_task_results("t", 0, [{"context": "x"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        await publisher.publish_task(TaskAppend("t", -1, 0, []))
    with pytest.raises(ValueError, match="subject prefix"):
        Publisher(publisher.nc, prefix="vwed.>")


async def test_tips_name_each_recent_keys_latest_rev_and_stop_after_the_window(
    nats_server: NatsServer, nc: Client
) -> None:
    wire = await record(nc, ">")
    publisher = await Publisher.connect(nats_server.url, tip_interval=0.2, tip_window=1.0)
    await publisher.append_task_results("t-1", 0, [running("a")])
    last_task_rev = await publisher.append_task_results("t-1", 1, [running("b")])
    status = LocationStatus(
        id="L", is_occupied=True, is_locked=False, is_disabled=False, is_empty_tray=False
    )
    scene_rev = await publisher.status_change("场景 1", "A-1", StatusAction.OCCUPY, status)
    await asyncio.sleep(0.7)
    task_tips = wire.payloads("vwed.task.t-1.execution", op="tip")
    scene_tips = [
        p for s, p in wire.messages if s == "vwed.scene.~5Zy65pmvIDE.storage" and "kind" in p
    ]
    scene_tips = [p for p in scene_tips if p["kind"] == "tip"]
    assert len(task_tips) >= 2
    assert task_tips[-1] == {"task_record_id": "t-1", "rev": last_task_rev, "op": "tip"}
    assert all(tip == task_tips[-1] for tip in task_tips)
    assert scene_tips[-1] == {"scene_id": "场景 1", "rev": scene_rev, "kind": "tip"}

    # A minute without events for a key (here one window) and it is no longer tipped.
    await asyncio.sleep(1.2)
    count = len(wire.messages)
    await asyncio.sleep(0.6)
    assert len(wire.messages) == count

    # close() stops them even for keys inside the window.
    await publisher.append_task_results("t-1", 2, [running("c")])
    await publisher.close()
    count = len(wire.messages)
    await asyncio.sleep(0.6)
    assert len(wire.messages) == count


async def test_a_key_can_be_tipped_without_an_event(nats_server: NatsServer, nc: Client) -> None:
    # For state that changed while no event could describe it: the tip's fresh rev is above
    # every rev before it, so each hub below it re-snapshots; the next event goes above it.
    wire = await record(nc, ">")
    publisher = await Publisher.connect(nats_server.url, tip_interval=None)
    appended = await publisher.append_task_results("t-1", 0, [running("a")])
    task_tip = await publisher.tip_task("t-1")
    scene_tip = await publisher.tip_scene("场景 1")
    after = await publisher.append_task_results("t-1", 1, [running("b")])
    assert appended < task_tip < scene_tip < after
    with pytest.raises(ValueError, match="empty"):
        await publisher.tip_scene("")
    await publisher.flush()
    await wire.wait_for(4)
    assert wire.payloads("vwed.task.t-1.execution", op="tip") == [
        {"task_record_id": "t-1", "rev": task_tip, "op": "tip"}
    ]
    assert [p["rev"] for p in wire.payloads("vwed.task.t-1.execution")] == [
        appended,
        task_tip,
        after,
    ]
    assert wire.payloads("vwed.scene.~5Zy65pmvIDE.storage") == [
        {"scene_id": "场景 1", "rev": scene_tip, "kind": "tip"}
    ]
    await publisher.close()


def test_the_action_names_the_one_flag_that_flipped() -> None:
    free = LocationStatus(
        id="L", is_occupied=False, is_locked=False, is_disabled=False, is_empty_tray=False
    )

    def changed(**fields: Any) -> LocationStatus:
        return LocationStatus(**{**free.__dict__, **fields})

    cases = [
        (free, changed(is_occupied=True), StatusAction.OCCUPY),
        (changed(is_occupied=True), free, StatusAction.RELEASE),
        (free, changed(is_locked=True, locked_by="task-1"), StatusAction.LOCK),
        (changed(is_locked=True), free, StatusAction.UNLOCK),
        (free, changed(is_disabled=True), StatusAction.DISABLE),
        (changed(is_disabled=True), free, StatusAction.ENABLE),
        (free, changed(is_empty_tray=True), StatusAction.SET_EMPTY_TRAY),
        (changed(is_empty_tray=True), free, StatusAction.CLEAR_EMPTY_TRAY),
        (free, changed(goods_content="托盘"), StatusAction.UPDATE),
        (free, changed(is_occupied=True, is_locked=True), StatusAction.UPDATE),
        (free, free, StatusAction.UPDATE),
    ]
    for before, after, action in cases:
        assert derive_action(before, after) is action, (before, after)


async def test_every_recent_key_is_tipped_at_once_after_nats_comes_back(
    nats_server: NatsServer,
) -> None:
    # The observer reconnects faster than the publisher, so it is back in time to see the tips.
    observer = await nats.connect(
        nats_server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1
    )
    wire = await record(observer, "vwed.task.>")
    publisher = await Publisher.connect(nats_server.url, tip_interval=60.0, reconnect_time_wait=0.5)
    revs = {}
    for key in ["t-1", "t-2", "a.b"]:
        revs[key] = await publisher.append_task_results(key, 0, [running(key)])
    await publisher.flush()
    await wire.wait_for(3)

    await nats_server.stop()
    await asyncio.sleep(0.3)
    await nats_server.start()
    await wire.wait_for(6, timeout=10)
    tips = sorted(
        ((p["task_record_id"], p["rev"]) for _, p in wire.messages if p.get("op") == "tip"),
    )
    assert tips == sorted(revs.items())
    await publisher.close()
    await observer.close()


async def test_a_single_id_is_not_taken_for_a_list_of_ids(nc: Client, publisher: Publisher) -> None:
    # A str is an Iterable[str] to the type checker: remove_locations("s-1", "L-12") would
    # remove "L", "-", "1" and "2", and leave L-12 on every panel.
    wire = await record(nc, ">")
    with pytest.raises(TypeError, match="ids must be a list of str"):
        await publisher.remove_locations("s-1", "L-12")
    with pytest.raises(TypeError, match="must be a list"):
        await publisher.append_task_results("t-1", 0, b"x")  # type: ignore[arg-type]
    await publisher.flush()
    await asyncio.sleep(0.1)
    assert wire.messages == []


async def test_values_changed_after_they_were_built_are_checked_before_sending(
    nc: Client, publisher: Publisher
) -> None:
    # Each of these reaches every hub as a malformed event, which it drops: the event is lost.
    wire = await record(nc, ">")
    status = occupied("L-1")
    status.is_occupied = 1  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"LocationStatus\.is_occupied must be bool"):
        await publisher.status_change("s-1", "A-1", StatusAction.OCCUPY, status)

    result = running("x")
    result.status = "DONE"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="DONE"):
        await publisher.append_task_results("t-1", 0, [result])

    location = StorageLocation(
        id="L-1",
        layer_index=1,
        layer_name="A-1",
        station_name="A",
        scene_id="s-1",
        storage_area_id="area",
    )
    location.goods_weight = 12.5  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"StorageLocation\.goods_weight must be int"):
        await publisher.upsert_locations("s-1", [location])
    location.goods_weight = 2**63  # the hub reads it as a signed 64-bit integer
    with pytest.raises(ValueError, match="64-bit"):
        await publisher.upsert_locations("s-1", [location])
    with pytest.raises(ValueError, match="64-bit"):
        StorageLocation(
            id="L-1",
            layer_index=-(2**63) - 1,
            layer_name="A-1",
            station_name="A",
            scene_id="s-1",
            storage_area_id="area",
        )
    await publisher.flush()
    await asyncio.sleep(0.1)
    assert wire.messages == []

    # A plain status string set later is still a valid status.
    result.status = "SUCCESS"  # type: ignore[assignment]
    location.goods_weight = 2**63 - 1
    await publisher.append_task_results("t-1", 0, [result])
    await publisher.upsert_locations("s-1", [location])
    await wire.wait_for(2)


def events(wire: Recorder, subject: str) -> list[dict[str, Any]]:
    """The events on ``subject``, tips left out."""
    return [p for p in wire.payloads(subject) if "tip" not in (p.get("op"), p.get("kind"))]


def chain_of(payloads: list[dict[str, Any]]) -> list[tuple[int, int | None]]:
    """Each payload's rev and prev_rev (``None`` when it has none)."""
    return [(p["rev"], p.get("prev_rev")) for p in payloads]


async def test_each_event_names_the_rev_published_for_its_key_before_it(
    nc: Client, publisher: Publisher
) -> None:
    # A hub holding a key below an event's prev_rev lost an event in between and re-snapshots.
    wire = await record(nc, ">")
    status = occupied("L-1")
    t1 = await publisher.append_task_results("t-1", 0, [running("a")])
    t2 = await publisher.append_task_results("t-2", 0, [running("a")])
    t1_next = await publisher.replace_task_results("t-1", [running("a"), running("b")])
    await publisher.publish_task(TaskAppend("t-1", t1_next + 10, 2, [running("c")]))
    s1 = await publisher.status_change("场景 1", "A-1", StatusAction.OCCUPY, status)
    s1_next = await publisher.upsert_locations("场景 1", [])
    s1_last = await publisher.remove_locations("场景 1", ["L-1"])
    await publisher.publish_scene(LocationsRemove("场景 1", s1_last + 5, ["L-2"]))
    # The same id as a scene is another key.
    t2_as_scene = await publisher.remove_locations("t-2", ["L-1"])
    t2_next = await publisher.append_task_results("t-2", 1, [running("b")])
    await publisher.flush()
    await wire.wait_for(10)

    assert chain_of(events(wire, "vwed.task.t-1.execution")) == [
        (t1, None),
        (t1_next, t1),
        (t1_next + 10, t1_next),
    ]
    assert chain_of(events(wire, "vwed.task.t-2.execution")) == [(t2, None), (t2_next, t2)]
    assert chain_of(events(wire, "vwed.scene.~5Zy65pmvIDE.storage")) == [
        (s1, None),
        (s1_next, s1),
        (s1_last, s1_next),
        (s1_last + 5, s1_last),
    ]
    assert chain_of(events(wire, "vwed.scene.t-2.storage")) == [(t2_as_scene, None)]
    # On the wire it comes right after rev, as in the golden vectors.
    first, second = [m for s, m in wire.messages if s == "vwed.task.t-2.execution"]
    assert list(first) == ["task_record_id", "rev", "op", "index", "results"]
    assert list(second) == ["task_record_id", "rev", "prev_rev", "op", "index", "results"]


async def test_a_tip_without_an_event_is_the_next_events_prev_rev(
    nc: Client, publisher: Publisher
) -> None:
    wire = await record(nc, ">")
    appended = await publisher.append_task_results("t-1", 0, [running("a")])
    task_tip = await publisher.tip_task("t-1")
    after = await publisher.append_task_results("t-1", 1, [running("b")])
    scene_tip = await publisher.tip_scene("s-1")
    scene_event = await publisher.remove_locations("s-1", ["L-1"])
    await publisher.flush()
    await wire.wait_for(5)
    assert chain_of(wire.payloads("vwed.task.t-1.execution")) == [
        (appended, None),
        (task_tip, None),  # a tip never carries a prev_rev
        (after, task_tip),
    ]
    assert chain_of(wire.payloads("vwed.scene.s-1.storage")) == [
        (scene_tip, None),
        (scene_event, scene_tip),
    ]


async def test_a_callers_own_prev_rev_is_sent_as_given(nc: Client, publisher: Publisher) -> None:
    wire = await record(nc, ">")
    first = await publisher.replace_task_results("t-1", [running("a")])
    # The caller knows better (say, its own store's previous version): it is kept.
    own = TaskReplace("t-1", first + 10, [running("a")], prev_rev=first - 5)
    await publisher.publish_task(own)
    await publisher.publish_scene(LocationsRemove("s-1", 20, ["L-1"], prev_rev=19))
    # The publisher's own filling does not change the caller's event: sent again with a new
    # rev, it names the rev sent just before, not a stale one.
    reused = LocationsRemove("s-1", 30, ["L-1"])
    await publisher.publish_scene(reused)
    assert reused.prev_rev is None
    reused.rev = 40
    await publisher.publish_scene(reused)
    await publisher.flush()
    await wire.wait_for(5)
    assert chain_of(wire.payloads("vwed.task.t-1.execution")) == [
        (first, None),
        (first + 10, first - 5),
    ]
    assert chain_of(wire.payloads("vwed.scene.s-1.storage")) == [(20, 19), (30, 20), (40, 30)]
    # Refused before anything is sent, like a bad rev.
    with pytest.raises(ValueError, match="prev_rev must be below rev"):
        await publisher.publish_task(TaskReplace("t-1", 50, [], prev_rev=50))
    reused.rev, reused.prev_rev = 50, -1
    with pytest.raises(ValueError, match="prev_rev must be an unsigned 64-bit integer"):
        await publisher.publish_scene(reused)
    await publisher.flush()
    await asyncio.sleep(0.1)
    assert len(wire.messages) == 5


async def test_an_event_below_the_last_rev_sent_names_no_prev_rev(
    nc: Client, publisher: Publisher
) -> None:
    # Out of order (every hub drops it): prev_rev must stay below rev, so it is left out.
    wire = await record(nc, ">")
    await publisher.publish_scene(LocationsRemove("s-1", 20, ["L-1"]))
    await publisher.publish_scene(LocationsRemove("s-1", 10, ["L-1"]))
    await publisher.publish_scene(LocationsRemove("s-1", 20, ["L-1"]))
    await publisher.publish_scene(LocationsRemove("s-1", 21, ["L-1"]))
    await publisher.flush()
    await wire.wait_for(4)
    assert chain_of(wire.payloads("vwed.scene.s-1.storage")) == [
        (20, None),
        (10, None),
        (20, None),
        (21, 20),
    ]


async def test_with_tips_off_no_prev_rev_is_filled_in(nats_server: NatsServer, nc: Client) -> None:
    # Nothing is remembered per key then (it would never be forgotten either).
    wire = await record(nc, ">")
    publisher = await Publisher.connect(nats_server.url, tip_interval=None)
    try:
        first = await publisher.append_task_results("t-1", 0, [running("a")])
        second = await publisher.append_task_results("t-1", 1, [running("b")])
        tip = await publisher.tip_task("t-1")
        third = await publisher.append_task_results("t-1", 2, [running("c")])
        await publisher.publish_scene(LocationsRemove("s-1", 20, ["L-1"]))
        await publisher.publish_scene(LocationsRemove("s-1", 21, ["L-1"], prev_rev=20))
        await publisher.flush()
        await wire.wait_for(6)
    finally:
        await publisher.close()
    assert chain_of(wire.payloads("vwed.task.t-1.execution")) == [
        (first, None),
        (second, None),
        (tip, None),
        (third, None),
    ]
    # A caller's own prev_rev is still sent.
    assert chain_of(wire.payloads("vwed.scene.s-1.storage")) == [(20, None), (21, 20)]


async def test_the_blocking_publisher_chains_events_the_same_way(
    nats_server: NatsServer, nc: Client
) -> None:
    wire = await record(nc, ">")

    def publish() -> list[int]:
        with BlockingPublisher.connect(nats_server.url) as bp:
            revs = [
                bp.append_task_results("t-1", 0, [running("a")]),
                bp.tip_task("t-1"),
                bp.replace_task_results("t-1", [running("a")]),
                bp.remove_locations("s-1", ["L-1"]),
            ]
            bp.publish_task(TaskAppend("t-1", revs[2] + 1, 1, [running("b")]))
            bp.publish_scene(LocationsRemove("s-1", revs[3] + 1, ["L-2"], prev_rev=7))
            bp.flush()
            return revs

    first, tip, replaced, removed = await asyncio.to_thread(publish)
    await wire.wait_for(6)
    assert chain_of(wire.payloads("vwed.task.t-1.execution")) == [
        (first, None),
        (tip, None),
        (replaced, tip),
        (replaced + 1, replaced),
    ]
    assert chain_of(wire.payloads("vwed.scene.s-1.storage")) == [(removed, None), (removed + 1, 7)]

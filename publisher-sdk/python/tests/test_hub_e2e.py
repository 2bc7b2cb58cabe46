"""Every operation of the SDK, end to end: the real hub, real panels, their exact messages."""

from __future__ import annotations

import json
import re
from typing import Any

from harness import TIMESTAMP, Hub, WsClient
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from vwed_publisher import (
    LocationStatus,
    Publisher,
    SceneSnapshot,
    StatusAction,
    StatusChange,
    StorageLocation,
    TaskAppend,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)
from vwed_publisher.wire import to_json

TASK_UPDATE_FIELDS = ["type", "task_record_id", "timestamp", "message", "data"]
SCENE_UPDATE_FIELDS = ["type", "scene_id", "timestamp", "message", "data"]
STATUS_CHANGE_FIELDS = ["type", "scene_id", "layer_name", "action", "timestamp", "new_status"]


def wire(value: Any) -> Any:
    """What a value looks like once it went through the hub: its JSON, parsed."""
    return json.loads(to_json(value))


def result(second: int, context: str, status: TaskStatus = TaskStatus.RUNNING) -> TaskResult:
    return TaskResult(f"2025-06-11T12:00:{second:02d}.000Z", context, status)


def location(id: str, station: str, layer: int, **fields: Any) -> StorageLocation:
    return StorageLocation(
        id=id,
        layer_index=layer,
        layer_name=f"{station}-{layer}",
        station_name=station,
        scene_id="s-1",
        storage_area_id="area-A",
        area_name="A 区",
        **fields,
    )


class TaskOwner:
    """A task engine's state: results and rev, read together by the snapshot handler."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.tasks: dict[str, tuple[int, list[TaskResult]]] = {}

    def snapshot(self, task_record_id: str) -> TaskSnapshot | None:
        if task_record_id not in self.tasks:
            return None
        rev, results = self.tasks[task_record_id]
        return TaskSnapshot(task_record_id, rev, list(results))

    async def append(self, task_record_id: str, *new: TaskResult) -> int:
        _, results = self.tasks.setdefault(task_record_id, (0, []))
        index = len(results)
        results.extend(new)
        rev = await self.publisher.append_task_results(task_record_id, index, new)
        self.tasks[task_record_id] = (rev, results)
        return rev


def assert_task_update(message: dict[str, Any], task_record_id: str, data: list[Any]) -> None:
    assert list(message) == TASK_UPDATE_FIELDS
    assert message["type"] == "task_execution_update"
    assert message["task_record_id"] == task_record_id
    assert re.match(TIMESTAMP, message["timestamp"])
    assert message["message"] == "成功获取任务记录执行结果"
    assert message["data"] == wire(data)


async def test_a_realtime_task_panel_sees_the_state_then_each_change(
    hub: Hub, publisher: Publisher
) -> None:
    owner = TaskOwner(publisher)
    first = result(0, "[取货] 开始")
    await owner.append("t-1", first)
    await publisher.serve_task_snapshots(owner.snapshot)

    panel = await hub.client("task-execution", "t-1", "interval=1")
    assert_task_update(await panel.recv(), "t-1", [first])

    second = result(1, "[运输] 前往站点")
    await owner.append("t-1", second)
    assert_task_update(await panel.recv(), "t-1", [first, second])

    done = result(2, "[完成] 返回待命点", TaskStatus.SUCCESS)
    await publisher.replace_task_results("t-1", [first, done])
    assert_task_update(await panel.recv(), "t-1", [first, done])


async def test_a_broadcast_task_panel_sees_each_event_as_it_happens(
    hub: Hub, publisher: Publisher
) -> None:
    owner = TaskOwner(publisher)
    await owner.append("t-2", result(0, "[取货] 开始"))
    await publisher.serve_task_snapshots(owner.snapshot)
    panel = await hub.client("task-execution-broadcast", "t-2")
    # No initial state on a broadcast endpoint; get_status answers it, which also shows that
    # the hub is subscribed before anything is published.
    await panel.send_json({"type": "get_status"})
    assert_task_update(await panel.recv(), "t-2", [result(0, "[取货] 开始")])

    step = result(1, "[取货] 叉取托盘")
    await owner.append("t-2", step)
    assert_task_update(await panel.recv(), "t-2", [step])
    failed = result(2, "[放货] 失败", TaskStatus.FAILED)
    await publisher.replace_task_results("t-2", [step, failed])
    assert_task_update(await panel.recv(), "t-2", [step, failed])


async def test_an_unknown_task_is_told_and_appears_later(hub: Hub, publisher: Publisher) -> None:
    owner = TaskOwner(publisher)
    await publisher.serve_task_snapshots(owner.snapshot)
    panel = await hub.client("task-execution", "t-new", "interval=1")
    error = await panel.recv()
    assert list(error) == ["type", "task_record_id", "timestamp", "message"]
    assert error["type"] == "error"
    assert error["message"] == "任务记录不存在: t-new"

    first = result(0, "[取货] 开始")
    await owner.append("t-new", first)
    assert_task_update(await panel.recv(), "t-new", [first])


class SceneOwner:
    """A storage service's state: locations and rev, read together by the snapshot handler."""

    def __init__(self, publisher: Publisher, *locations: StorageLocation) -> None:
        self.publisher = publisher
        self.rev = publisher.next_rev()
        self.locations = {loc.id: loc for loc in locations}

    def snapshot(self, scene_id: str) -> SceneSnapshot | None:
        if scene_id != "s-1":
            return None
        return SceneSnapshot(scene_id, self.rev, list(self.locations.values()))


def assert_scene_update(message: dict[str, Any], locations: list[StorageLocation]) -> None:
    assert list(message) == SCENE_UPDATE_FIELDS
    assert message["type"] == "storage_location_update"
    assert message["scene_id"] == "s-1"
    assert re.match(TIMESTAMP, message["timestamp"])
    assert message["message"] == "成功获取库位状态"
    assert message["data"] == {
        "total": len(locations),
        "page": 1,
        "page_size": 1000,
        "total_pages": 1,
        "storage_locations": wire(locations),
    }


async def test_a_realtime_scene_panel_sees_status_changes_upserts_and_removals(
    hub: Hub, publisher: Publisher
) -> None:
    a1, a2 = location("L-1", "A-01", 1), location("L-2", "A-01", 2)
    owner = SceneOwner(publisher, a1, a2)
    await publisher.serve_scene_snapshots(owner.snapshot)
    panel = await hub.client("storage-location", "s-1", "interval=1")
    assert_scene_update(await panel.recv(), [a1, a2])

    status = LocationStatus(
        id="L-1",
        is_occupied=True,
        is_locked=True,
        is_disabled=False,
        is_empty_tray=False,
        locked_by="task-7",
        goods_content="托盘 A",
        last_access_at="2025-06-11T12:00:00.000Z",
        updated_at="2025-06-11T12:00:00.000Z",
    )
    stamp = "2025-06-11T12:00:05.123Z"
    await publisher.status_change("s-1", "A-01-1", StatusAction.OCCUPY, status, timestamp=stamp)
    change = await panel.recv()
    assert list(change) == STATUS_CHANGE_FIELDS
    assert change == {
        "type": "storage_location_status_change",
        "scene_id": "s-1",
        "layer_name": "A-01-1",
        "action": "OCCUPY",
        "timestamp": stamp,
        "new_status": wire(status),
    }
    a1.apply_status(status)
    assert_scene_update(await panel.recv_type("storage_location_update"), [a1, a2])

    b1 = location("L-3", "B-01", 1, is_disabled=True, tags="冷藏")
    await publisher.upsert_locations("s-1", [b1])
    assert_scene_update(await panel.recv(), [a1, a2, b1])

    await publisher.remove_locations("s-1", ["L-2"])
    assert_scene_update(await panel.recv(), [a1, b1])


async def test_a_broadcast_scene_panel_sees_each_change_and_any_action(
    hub: Hub, publisher: Publisher
) -> None:
    a1 = location("L-1", "A-01", 1)
    owner = SceneOwner(publisher, a1)
    await publisher.serve_scene_snapshots(owner.snapshot)
    panel = await hub.client("storage-location-broadcast", "s-1")
    await panel.send_json({"type": "get_status"})
    assert_scene_update(await panel.recv(), [a1])

    status = a1.status()
    status.is_empty_tray = True
    # An action the contract does not name is forwarded as it is.
    await publisher.status_change("s-1", "A-01-1", "MOVE_TRAY", status)
    change = await panel.recv()
    assert change["action"] == "MOVE_TRAY"
    assert change["new_status"] == wire(status)
    assert re.match(TIMESTAMP, change["timestamp"])

    upserted = location("L-9", "C-02", 3, goods_weight=1200)
    await publisher.upsert_locations("s-1", [upserted])
    assert_scene_update(await panel.recv(), [upserted])

    # A removal has no message of its own on the broadcast endpoint (SPEC 2.1)...
    await publisher.remove_locations("s-1", ["L-9"])
    await panel.silent_for(0.5)
    # ...and the next event is still delivered: nothing is stuck behind it.
    rev = publisher.next_rev()
    await publisher.publish_scene(StatusChange("s-1", rev, "A-01-1", StatusAction.LOCK, status))
    assert (await panel.recv())["action"] == "LOCK"


async def test_events_with_the_services_own_revs(hub: Hub, publisher: Publisher) -> None:
    results = [result(0, "[取货] 开始")]
    await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 100, results))
    panel = await hub.client("task-execution-broadcast", "t-own")
    await panel.send_json({"type": "get_status"})
    assert_task_update(await panel.recv(), "t-own", results)

    # The revs go out as given: the hub forwards 101, drops a second 101 as already
    # forwarded, and forwards 102.
    fresh = result(1, "fresh")
    await publisher.publish_task(TaskAppend("t-own", 101, 1, [fresh]))
    assert_task_update(await panel.recv(), "t-own", [fresh])
    await publisher.publish_task(TaskAppend("t-own", 101, 1, [result(1, "again")]))
    later = result(2, "later")
    await publisher.publish_task(TaskAppend("t-own", 102, 2, [later]))
    assert_task_update(await panel.recv(), "t-own", [later])


ODD_IDS = ["a.b", "YS5i", "*", ">", "仓库 一号", "~x", "a" * 128, "a" * 129, "仓" * 85 + "a"]


async def test_odd_ids_never_cross_keys(hub: Hub, publisher: Publisher) -> None:
    await publisher.serve_task_snapshots(lambda id: TaskSnapshot(id, 1, []))
    panels: dict[str, WsClient] = {}
    for id in ODD_IDS:
        panels[id] = await hub.client("task-execution-broadcast", id)
        await panels[id].send_json({"type": "get_status"})
        assert_task_update(await panels[id].recv(), id, [])
    for id in ODD_IDS:
        await publisher.append_task_results(id, 0, [result(0, f"for {id}")])
    for id, panel in panels.items():
        assert_task_update(await panel.recv(), id, [result(0, f"for {id}")])
        await panel.silent_for(0.05)


async def test_panels_offering_compression_get_the_same_messages_in_a_fraction_of_the_bytes(
    hub: Hub, publisher: Publisher
) -> None:
    """SPEC 2.6, with websockets' own permessage-deflate on the client side."""
    locations = [
        location(f"L-{n:03d}", f"S-{n // 10:02d}", n % 10 + 1, goods_content="托盘", tags="常温")
        for n in range(300)
    ]
    owner = SceneOwner(publisher, *locations)
    await publisher.serve_scene_snapshots(owner.snapshot)
    deflating = await hub.client("storage-location-broadcast", "s-1")
    plain = await hub.client("storage-location-broadcast", "s-1", compression=None)
    answers = [panel.connection.response for panel in (deflating, plain)]
    assert answers[0] is not None
    assert answers[1] is not None
    agreed = answers[0].headers.get("Sec-WebSocket-Extensions")
    assert agreed == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert "Sec-WebSocket-Extensions" not in answers[1].headers

    endpoint = "storage-location-broadcast"
    sent_before = await hub.metric("vwed_hub_message_bytes_total", endpoint=endpoint)
    wire_before = await hub.metric("vwed_hub_wire_bytes_total", endpoint=endpoint)
    # websockets compresses what it sends too: the hub inflates the request.
    await deflating.send_json({"type": "get_status"})
    compressed_state = await deflating.recv()
    assert_scene_update(compressed_state, locations)
    sent = await hub.metric("vwed_hub_message_bytes_total", endpoint=endpoint) - sent_before
    written = await hub.metric("vwed_hub_wire_bytes_total", endpoint=endpoint) - wire_before
    assert sent > 100_000
    assert written * 5 < sent, f"{sent} bytes of state went out as {written}"

    await plain.send_json({"type": "get_status"})
    plain_state = await plain.recv()
    assert {**plain_state, "timestamp": ""} == {**compressed_state, "timestamp": ""}

    # One status change, one rendering: both panels read exactly the same text.
    status = locations[0].status()
    status.is_occupied = True
    await publisher.status_change("s-1", "S-00-1", StatusAction.OCCUPY, status)
    texts = [await panel.connection.recv() for panel in (deflating, plain)]
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["new_status"] == wire(status)


async def test_an_offer_naming_the_servers_window_is_answered_as_the_rfc_says(
    hub: Hub, publisher: Publisher
) -> None:
    """RFC 7692 7.1.2.1: server_max_window_bits offered is echoed; websockets checks it."""
    owner = SceneOwner(publisher, location("L-1", "A-01", 1))
    await publisher.serve_scene_snapshots(owner.snapshot)
    offer = ClientPerMessageDeflateFactory(server_max_window_bits=15, client_max_window_bits=True)
    url = f"ws://127.0.0.1:{hub.port}/ws/storage-location/s-1?interval=1"
    async with connect(url, extensions=[offer], compression=None, open_timeout=5) as connection:
        assert connection.response is not None
        agreed = connection.response.headers.get("Sec-WebSocket-Extensions")
        assert agreed is not None
        assert "server_max_window_bits=15" in agreed
        panel = WsClient(connection)
        assert_scene_update(await panel.recv(), list(owner.locations.values()))

"""A row changed in the database reaches panels through the real hub, with the exact message.

Every test runs on SQLite and on a real MariaDB server, with the reference schema, the bridge
as a separate process, a real nats-server and the real hub.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from databases import Site
from harness import Hub, NatsServer, WsClient
from processes import BridgeProcess

LOCATION_FIELDS = [
    "id",
    "layer_index",
    "layer_name",
    "operate_point_id",
    "station_name",
    "storage_location_name",
    "scene_id",
    "storage_area_id",
    "area_name",
    "is_occupied",
    "is_locked",
    "is_disabled",
    "is_empty_tray",
    "locked_by",
    "goods_content",
    "goods_weight",
    "goods_volume",
    "goods_stored_at",
    "goods_retrieved_at",
    "last_access_at",
    "max_weight",
    "max_volume",
    "layer_height",
    "tags",
    "description",
    "created_at",
    "updated_at",
]
STATUS_FIELDS = [
    "id",
    "is_occupied",
    "is_locked",
    "is_disabled",
    "is_empty_tray",
    "locked_by",
    "goods_content",
    "last_access_at",
    "updated_at",
]
FLAGS = {"is_occupied", "is_locked", "is_disabled", "is_empty_tray"}
TIMES = {"goods_stored_at", "goods_retrieved_at", "last_access_at", "created_at", "updated_at"}


def api_time(value: Any) -> str:
    """A database time as the API writes it (independently of the bridge's own conversion)."""
    moment = datetime.fromisoformat(value.replace("Z", "")) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def api_location(row: dict[str, Any]) -> dict[str, Any]:
    """A location row as panels must receive it: the 27 fields, in order."""
    out: dict[str, Any] = {}
    for name in LOCATION_FIELDS:
        value = row[name]
        if value is not None and name in FLAGS:
            value = bool(value)
        elif value is not None and name in TIMES:
            value = api_time(value)
        out[name] = value
    return out


async def location(site: Site, scene_id: str, id: str) -> dict[str, Any]:
    rows = await site.rows(
        "SELECT * FROM vwed_storage_location WHERE scene_id = :s AND id = :i", s=scene_id, i=id
    )
    return api_location(rows[0])


async def start_bridge(
    tmp_path: Path, site: Site, nats_server: NatsServer, *extra: str
) -> BridgeProcess:
    bridge = BridgeProcess(tmp_path, site.url, nats_server.url, *extra)
    await bridge.start()
    return bridge


async def subscribed(hub: Hub, endpoint: str, id: str, query: str = "") -> WsClient:
    """A panel whose subscription is in place (a broadcast panel gets no first message)."""
    panel = await hub.client(endpoint, id, query)
    await panel.send_json({"type": "ping"})
    await panel.recv_type("pong")
    return panel


async def test_a_changed_location_reaches_both_scene_endpoints_exactly(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_location("scene-1", "L-2", "ST10", 1)
    await site.add_location("scene-1", "L-1", "ST9", 1, goods_content="托盘 A", max_weight=500)
    bridge = await start_bridge(tmp_path, site, nats_server)

    panel = await hub.client("storage-location", "scene-1", "interval=1")
    first = await panel.recv_type("storage_location_update")
    assert first["scene_id"] == "scene-1"
    assert first["message"] == "成功获取库位状态"
    assert first["data"] == {
        "total": 2,
        "page": 1,
        "page_size": 1000,
        "total_pages": 1,
        # Natural order of station names: ST9 before ST10.
        "storage_locations": [
            await location(site, "scene-1", "L-1"),
            await location(site, "scene-1", "L-2"),
        ],
    }
    assert list(first["data"]["storage_locations"][0]) == LOCATION_FIELDS
    broadcast = await subscribed(hub, "storage-location-broadcast", "scene-1")

    await site.set_location("scene-1", "L-1", is_occupied=True, goods_content="托盘 B")
    after = await location(site, "scene-1", "L-1")
    expected = {
        "type": "storage_location_status_change",
        "scene_id": "scene-1",
        "layer_name": "ST9-1",
        "action": "OCCUPY",
        "timestamp": after["updated_at"],
        "new_status": {name: after[name] for name in STATUS_FIELDS},
    }
    assert await panel.recv_type("storage_location_status_change") == expected
    assert await broadcast.recv() == expected
    update = await panel.recv_type("storage_location_update")
    assert update["data"]["storage_locations"][0] == after
    await broadcast.silent_for(0.5)
    await bridge.stop()


async def test_each_action_is_derived_from_what_changed(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_location("scene-1", "L-1", "ST1", 1)
    bridge = await start_bridge(tmp_path, site, nats_server)
    broadcast = await subscribed(hub, "storage-location-broadcast", "scene-1")
    steps: list[tuple[dict[str, Any], str]] = [
        ({"is_occupied": True}, "OCCUPY"),
        ({"is_occupied": False}, "RELEASE"),
        ({"is_locked": True, "locked_by": "task-7"}, "LOCK"),
        ({"is_locked": False, "locked_by": None}, "UNLOCK"),
        ({"is_disabled": True}, "DISABLE"),
        ({"is_disabled": False}, "ENABLE"),
        ({"is_empty_tray": True}, "SET_EMPTY_TRAY"),
        ({"is_empty_tray": False}, "CLEAR_EMPTY_TRAY"),
        ({"goods_content": "空托盘"}, "UPDATE"),
        ({"is_occupied": True, "is_locked": True}, "UPDATE"),
    ]
    for fields, action in steps:
        await site.set_location("scene-1", "L-1", **fields)
        change = await broadcast.recv()
        after = await location(site, "scene-1", "L-1")
        assert change["type"] == "storage_location_status_change", change
        assert (change["action"], change["new_status"]) == (
            action,
            {name: after[name] for name in STATUS_FIELDS},
        ), fields

    # A change beyond the status fields is a full record: one storage_location_update on the
    # broadcast endpoint, holding just that location.
    await site.set_location("scene-1", "L-1", max_weight=900, description="高位货架")
    update = await broadcast.recv()
    assert update["type"] == "storage_location_update"
    assert update["data"]["storage_locations"] == [await location(site, "scene-1", "L-1")]
    await broadcast.silent_for(0.5)
    await bridge.stop()


async def test_added_and_deleted_locations_reach_the_realtime_view(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_location("scene-1", "L-1", "ST1", 1)
    bridge = await start_bridge(tmp_path, site, nats_server, "--full-scan-interval", "1")
    panel = await hub.client("storage-location", "scene-1", "interval=1")
    assert (await panel.recv_type("storage_location_update"))["data"]["total"] == 1

    await site.add_location("scene-1", "L-2", "ST2", 1)
    update = await panel.recv_type("storage_location_update")
    assert [loc["id"] for loc in update["data"]["storage_locations"]] == ["L-1", "L-2"]
    assert update["data"]["storage_locations"][1] == await location(site, "scene-1", "L-2")

    await site.execute("DELETE FROM vwed_storage_location WHERE id = 'L-1'")
    update = await panel.recv_type("storage_location_update", timeout=5)
    assert [loc["id"] for loc in update["data"]["storage_locations"]] == ["L-2"]
    await bridge.stop()


async def test_task_results_reach_both_task_endpoints_in_order(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_result("task-1", "[取货] 开始")
    await site.add_result("task-2", "[other] task")
    bridge = await start_bridge(tmp_path, site, nats_server)
    panel = await hub.client("task-execution", "task-1", "interval=1")
    first = await panel.recv_type("task_execution_update")
    result = {
        "created_at": "2025-06-11T12:00:00.000Z",
        "context": "[取货] 开始",
        "status": "RUNNING",
    }
    assert first["message"] == "成功获取任务记录执行结果"
    assert first["data"] == [result]
    broadcast = await subscribed(hub, "task-execution-broadcast", "task-1")

    await site.add_result("task-1", "[运输] 前往站点")
    await site.add_result("task-2", "[other] more")
    await site.add_result("task-1", "[放货] 完成", "SUCCESS")
    moving = {**result, "context": "[运输] 前往站点"}
    done = {**result, "context": "[放货] 完成", "status": "SUCCESS"}
    received: list[dict[str, Any]] = []
    while len(received) < 2:
        message = await broadcast.recv()
        assert message["type"] == "task_execution_update"
        assert message["task_record_id"] == "task-1"
        received.extend(message["data"])
    assert received == [moving, done]
    while (update := await panel.recv_type("task_execution_update"))["data"] != [
        result,
        moving,
        done,
    ]:
        assert len(update["data"]) < 3, update
    await broadcast.silent_for(0.5)
    await bridge.stop()


async def test_an_unknown_key_is_an_error_and_appears_later(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    bridge = await start_bridge(tmp_path, site, nats_server)
    panel = await hub.client("task-execution", "task-new", "interval=1")
    error = await panel.recv_type("error")
    assert error["task_record_id"] == "task-new"
    scene = await hub.client("storage-location", "scene-new", "interval=1")
    assert (await scene.recv_type("error"))["scene_id"] == "scene-new"
    await site.add_result("task-new", "[取货] 开始")
    update = await panel.recv_type("task_execution_update")
    assert [r["context"] for r in update["data"]] == ["[取货] 开始"]
    await site.add_location("scene-new", "L-1", "ST1", 1)
    state = await scene.recv_type("storage_location_update")
    assert state["data"]["storage_locations"] == [await location(site, "scene-new", "L-1")]
    await bridge.stop()


async def test_rows_the_api_cannot_carry_are_skipped_and_the_rest_flows(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_result("task-1", "[取货] 开始")
    await site.add_location("scene-1", "L-1", "ST1", 1)
    bridge = await start_bridge(tmp_path, site, nats_server)
    panel = await hub.client("task-execution", "task-1", "interval=1")
    await panel.recv_type("task_execution_update")
    broadcast = await subscribed(hub, "storage-location-broadcast", "scene-1")

    # Ids no hub could serve, an unknown status, a flag that is not one: each skipped, and
    # none of them stops the polls.
    await site.add_result("", "[坏] 空的任务")
    await site.add_result("task\x01", "[坏] 控制字符")
    await site.add_result("task-1", "[坏] 状态", "BOGUS")
    await site.add_location("", "L-9", "ST9", 1)
    await site.add_location("scene-1", "L-2", "ST2", 1, is_occupied=7)
    await site.add_result("task-1", "[运输] 前往站点", "running ")
    await site.set_location("scene-1", "L-1", is_locked=True)

    update = await panel.recv_type("task_execution_update")
    # The bad row is skipped and not counted: the next result takes its place in the list.
    assert [(r["context"], r["status"]) for r in update["data"]] == [
        ("[取货] 开始", "RUNNING"),
        ("[运输] 前往站点", "RUNNING"),
    ]
    assert (await broadcast.recv())["action"] == "LOCK"
    _, metrics = await bridge.http_get("/metrics")
    assert 'vwed_bridge_rows_rejected_total{table="tasks"} 3.0' in metrics
    assert 'vwed_bridge_rows_rejected_total{table="locations"} 2.0' in metrics
    # The append came at the index the hub held: no second snapshot of the task was needed.
    assert 'vwed_bridge_snapshots_total{kind="task",result="found"} 1.0' in metrics
    await bridge.stop()


async def test_a_row_stamped_in_the_future_hides_no_later_change(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_location("scene-1", "L-1", "ST1", 1)
    await site.add_location("scene-1", "L-2", "ST1", 2)
    bridge = await start_bridge(tmp_path, site, nats_server)
    broadcast = await subscribed(hub, "storage-location-broadcast", "scene-1")
    await site.set_location(
        "scene-1", "L-1", goods_content="未来", updated_at="2099-01-01 00:00:00"
    )
    assert (await broadcast.recv())["new_status"]["updated_at"] == "2099-01-01T00:00:00.000Z"
    # Well within the full scan's 30 s: the cursor stayed at the database's clock.
    await site.set_location("scene-1", "L-2", is_occupied=True)
    change = await broadcast.recv(timeout=5)
    assert (change["action"], change["new_status"]["id"]) == ("OCCUPY", "L-2")
    await bridge.stop()

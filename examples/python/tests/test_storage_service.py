"""The storage service, run as its users run it, against a real nats-server and the real hub.

Each test drives the service over HTTP as a warehouse system would, and asserts the exact
WebSocket messages panels get: realtime ones (``/ws/storage-location/{scene}``, state first, then
updates and status changes) and broadcast ones (``/ws/storage-location-broadcast/{scene}``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import nats
from harness import TIMESTAMP, Hub, NatsServer, WsClient
from nats.aio.client import Client
from servers import StorageServiceProcess
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from vwed_publisher import Publisher, SceneEvent, StorageLocation

from storage_service.db import (
    LOCATION_FIELDS,
    LocationRow,
    SceneRow,
    create_tables,
    make_engine,
)
from storage_service.service import StorageService

UPDATE_FIELDS = ["type", "scene_id", "timestamp", "message", "data"]
STATUS_CHANGE_FIELDS = ["type", "scene_id", "layer_name", "action", "timestamp", "new_status"]
NEW_STATUS_FIELDS = [
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


def record(scene_id: str, station: str, layer: int, **fields: Any) -> dict[str, Any]:
    """A full storage location record, as a warehouse system PUTs it."""
    return {
        "id": f"{station}-{layer}",
        "layer_index": layer,
        "layer_name": f"{station}-L{layer}",
        "station_name": station,
        "scene_id": scene_id,
        "storage_area_id": "A1",
        "area_name": "A1库区",
        "max_weight": 5000,
        **fields,
    }


def natural(text: str) -> list[Any]:
    """Sort key of the hub's natural order: ``ST2`` before ``ST10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def panel_order(locations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Locations in the order a realtime panel lists them (SPEC 2.1)."""
    return sorted(
        locations, key=lambda loc: (natural(loc["station_name"]), loc["layer_index"], loc["id"])
    )


async def put(http: httpx.AsyncClient, scene_id: str, records: list[dict[str, Any]]) -> int:
    response = await http.put(f"/scenes/{scene_id}/locations", json=records)
    assert response.status_code == 200, response.text
    rev: int = response.json()["rev"]
    return rev


async def patch(
    http: httpx.AsyncClient, scene_id: str, location_id: str, **changes: Any
) -> dict[str, Any]:
    response = await http.patch(f"/scenes/{scene_id}/locations/{location_id}/status", json=changes)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def scene_state(http: httpx.AsyncClient, scene_id: str) -> dict[str, Any]:
    """The scene in the database: its rev and its locations (read in one transaction)."""
    response = await http.get(f"/scenes/{scene_id}")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def assert_scene_update(
    message: dict[str, Any], scene_id: str, locations: list[dict[str, Any]]
) -> None:
    """``message`` is a storage_location_update of exactly ``locations``, in panel order."""
    assert list(message) == UPDATE_FIELDS
    assert message["type"] == "storage_location_update"
    assert message["scene_id"] == scene_id
    assert re.match(TIMESTAMP, message["timestamp"])
    assert message["message"] == "成功获取库位状态"
    for location in message["data"]["storage_locations"]:
        assert list(location) == list(LOCATION_FIELDS)
    assert message["data"] == {
        "total": len(locations),
        "page": 1,
        "page_size": 1000,
        "total_pages": 1,
        "storage_locations": panel_order(locations),
    }


def status_change(scene_id: str, action: str, location: dict[str, Any]) -> dict[str, Any]:
    """The storage_location_status_change panels get for ``location`` as it is now."""
    return {
        "type": "storage_location_status_change",
        "scene_id": scene_id,
        "layer_name": location["layer_name"],
        "action": action,
        # The service stamps the change, the location's updated_at and the event alike.
        "timestamp": location["updated_at"],
        "new_status": {name: location[name] for name in NEW_STATUS_FIELDS},
    }


def assert_status_change(message: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(message) == STATUS_CHANGE_FIELDS
    assert list(message["new_status"]) == NEW_STATUS_FIELDS
    assert re.match(TIMESTAMP, message["timestamp"])
    assert message == expected


async def broadcast_panel(hub: Hub, scene_id: str) -> WsClient:
    """A broadcast panel that the hub has subscribed (its get_status is answered)."""
    panel = await hub.client("storage-location-broadcast", scene_id)
    await panel.send_json({"type": "get_status"})
    assert (await panel.recv())["type"] == "storage_location_update"
    return panel


def random_changes(ids: list[str], count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` status changes, each setting one flag of one of the locations ``ids``."""
    rng = random.Random(1)
    flags = ["is_occupied", "is_locked", "is_disabled", "is_empty_tray"]
    return [(rng.choice(ids), {rng.choice(flags): rng.random() < 0.5}) for _ in range(count)]


async def assert_every_change_seen(
    hub: Hub, panel: WsClient, ids: list[str], answers: list[dict[str, Any]]
) -> None:
    """``panel`` gets one status change per answer, each location's in the order of its revs.

    So the hub dropped none of them as older than one it had already seen.
    """
    changes: list[dict[str, Any]] = []
    while len(changes) < len(answers):
        try:
            message = await panel.recv(5)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"the panel saw {len(changes)} of {len(answers)} status changes"
            ) from None
        if message["type"] == "storage_location_status_change":
            changes.append(message)
    for location_id in ids:
        published = [
            status_change("north", answer["action"], answer["storage_location"])
            for answer in sorted(answers, key=lambda answer: answer["rev"])
            if answer["storage_location"]["id"] == location_id
        ]
        seen = [change for change in changes if change["new_status"]["id"] == location_id]
        assert seen == published
    assert await hub.metric("vwed_hub_events_stale_total") == 0


# --- the tests ----------------------------------------------------------------------------------


def test_the_location_table_has_the_sdks_27_fields_in_order() -> None:
    assert [column.name for column in LocationRow.__table__.columns] == list(LOCATION_FIELDS)
    assert len(LOCATION_FIELDS) == 27


async def test_a_transaction_sees_one_state_of_the_database(tmp_path: Path) -> None:
    # What a snapshot relies on: both its reads see the same moment, whatever commits between.
    database = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}")
    await create_tables(database)
    sessions = async_sessionmaker(database, expire_on_commit=False)
    async with sessions.begin() as session:
        session.add(SceneRow(id="north", rev=1))

    async def change() -> None:
        async with sessions.begin() as session:
            await session.execute(update(SceneRow).values(rev=2))

    try:
        async with sessions.begin() as reading:
            first = await reading.scalar(select(SceneRow.rev))
            writer = asyncio.create_task(change())
            await asyncio.sleep(0.2)
            assert await reading.scalar(select(SceneRow.rev)) == first == 1
            assert not writer.done()
        await writer
        async with sessions.begin() as session:
            assert await session.scalar(select(SceneRow.rev)) == 2
    finally:
        await database.dispose()


async def test_a_panel_that_connects_after_changes_gets_the_database_state(
    hub: Hub, http: httpx.AsyncClient
) -> None:
    records = [record("north", station, layer) for station in ("ST2", "ST10") for layer in (1, 2)]
    await put(http, "north", records)
    await patch(http, "north", "ST2-1", is_occupied=True, goods_content="纸箱")
    await patch(http, "north", "ST10-2", is_locked=True, locked_by="task-7")
    await http.delete("/scenes/north/locations/ST2-2")
    state = await scene_state(http, "north")
    assert len(state["storage_locations"]) == 3

    panel = await hub.client("storage-location", "north", "interval=1")
    assert_scene_update(await panel.recv(), "north", state["storage_locations"])
    # A filtered panel gets the matching part of the same state.
    occupied = await hub.client("storage-location", "north", "interval=1&is_occupied=true")
    [stored] = [loc for loc in state["storage_locations"] if loc["id"] == "ST2-1"]
    assert_scene_update(await occupied.recv(), "north", [stored])


async def test_each_status_change_reaches_panels_with_the_action_derived_from_it(
    hub: Hub, http: httpx.AsyncClient
) -> None:
    await put(http, "north", [record("north", "ST1", 1), record("north", "ST1", 2)])
    realtime = await hub.client("storage-location", "north", "interval=1")
    await realtime.recv()
    broadcast = await broadcast_panel(hub, "north")

    steps: list[tuple[dict[str, Any], str]] = [
        ({"is_occupied": True, "goods_content": "纸箱"}, "OCCUPY"),
        ({"is_occupied": False, "goods_content": None}, "RELEASE"),
        ({"is_locked": True, "locked_by": "task-7"}, "LOCK"),
        ({"is_locked": False, "locked_by": None}, "UNLOCK"),
        ({"is_disabled": True}, "DISABLE"),
        ({"is_disabled": False}, "ENABLE"),
        ({"is_empty_tray": True}, "SET_EMPTY_TRAY"),
        ({"is_empty_tray": False}, "CLEAR_EMPTY_TRAY"),
        ({"goods_content": "托盘 B"}, "UPDATE"),  # no flag flipped
        ({"is_occupied": True, "is_locked": True}, "UPDATE"),  # two flags at once
        ({"is_occupied": True}, "UPDATE"),  # already occupied: nothing flipped
    ]
    revs = []
    for changes, action in steps:
        answer = await patch(http, "north", "ST1-2", **changes)
        assert answer["action"] == action
        revs.append(answer["rev"])
        stored = (await http.get("/scenes/north/locations/ST1-2")).json()
        assert answer["storage_location"] == stored
        for name, value in changes.items():
            assert stored[name] == value
        expected = status_change("north", action, stored)
        assert_status_change(await broadcast.recv(), expected)
        assert_status_change(await realtime.recv_type("storage_location_status_change"), expected)
    assert revs == sorted(set(revs))
    assert (await scene_state(http, "north"))["rev"] == revs[-1]


async def test_an_upsert_and_a_removal_reach_the_panels(hub: Hub, http: httpx.AsyncClient) -> None:
    await put(http, "north", [record("north", "ST1", 1), record("north", "ST1", 2)])
    realtime = await hub.client("storage-location", "north", "interval=1")
    assert_scene_update(
        await realtime.recv(), "north", (await scene_state(http, "north"))["storage_locations"]
    )
    broadcast = await broadcast_panel(hub, "north")

    # One new location and one replaced (now disabled, with goods): one upsert event.
    changed = [
        record("north", "ST1", 2, is_disabled=True, goods_content="托盘", goods_weight=1200),
        record("north", "ST3", 1, tags="冷藏"),
    ]
    await put(http, "north", changed)
    state = await scene_state(http, "north")
    stored = [loc for loc in state["storage_locations"] if loc["id"] in ("ST1-2", "ST3-1")]
    assert_scene_update(await broadcast.recv(), "north", stored)
    assert_scene_update(await realtime.recv(), "north", state["storage_locations"])

    response = await http.delete("/scenes/north/locations/ST1-1")
    assert response.status_code == 200
    assert response.json() == {
        "scene_id": "north",
        "rev": (await scene_state(http, "north"))["rev"],
    }
    state = await scene_state(http, "north")
    assert [loc["id"] for loc in state["storage_locations"]] == ["ST1-2", "ST3-1"]
    assert_scene_update(await realtime.recv(), "north", state["storage_locations"])
    # A removal has no message of its own on the broadcast endpoint (SPEC 2.1).
    await broadcast.silent_for(0.5)


async def test_concurrent_changes_on_one_scene_all_reach_a_realtime_panel(
    hub: Hub, http: httpx.AsyncClient
) -> None:
    ids = [f"ST{station}-{layer}" for station in range(1, 5) for layer in (1, 2)]
    await put(
        http, "north", [record("north", f"ST{s}", layer) for s in range(1, 5) for layer in (1, 2)]
    )
    panel = await hub.client("storage-location", "north", "interval=1")
    await panel.recv()

    requests = random_changes(ids, 60)
    answers = await asyncio.gather(
        *(patch(http, "north", location_id, **changes) for location_id, changes in requests)
    )
    assert len({answer["rev"] for answer in answers}) == len(requests)

    await assert_every_change_seen(hub, panel, ids, answers)

    # And the panel's state ends equal to the database's, with nothing more to come.
    state = await scene_state(http, "north")
    update = await panel.recv_type("storage_location_update")
    while update["data"]["storage_locations"] != panel_order(state["storage_locations"]):
        update = await panel.recv_type("storage_location_update")
    assert_scene_update(update, "north", state["storage_locations"])
    await panel.silent_for(1.5)


async def test_a_restarted_service_keeps_its_revs_increasing(
    hub: Hub, storage: StorageServiceProcess, http: httpx.AsyncClient
) -> None:
    await put(http, "north", [record("north", "ST1", 1)])
    before = (await patch(http, "north", "ST1-1", is_occupied=True))["rev"]
    await storage.stop()

    # The database holds a rev ahead of this machine's clock: written by a machine whose clock
    # ran ahead, or before this one's was set back. The service must continue above it.
    ahead = before + 3_600_000_000  # an hour, in microseconds
    with sqlite3.connect(storage.database) as db:
        db.execute("UPDATE scenes SET rev = ? WHERE id = 'north'", (ahead,))
    await storage.start()
    assert (await scene_state(http, "north"))["rev"] == ahead

    panel = await hub.client("storage-location", "north", "interval=1")
    await panel.recv()
    answer = await patch(http, "north", "ST1-1", is_occupied=False)
    assert answer["rev"] > ahead
    # A rev at or below the one the hub holds would be dropped, and the panel never see it.
    expected = status_change("north", "RELEASE", answer["storage_location"])
    assert_status_change(await panel.recv_type("storage_location_status_change", 3), expected)


async def test_a_scene_unknown_to_panels_appears_when_it_is_created(
    hub: Hub, http: httpx.AsyncClient
) -> None:
    panel = await hub.client("storage-location", "south", "interval=1")
    error = await panel.recv()
    assert list(error) == ["type", "scene_id", "timestamp", "message"]
    assert error["type"] == "error"
    assert error["message"] == "场景不存在: south"

    await put(http, "south", [record("south", "ST1", 1)])
    state = await scene_state(http, "south")
    assert_scene_update(await panel.recv(), "south", state["storage_locations"])


async def test_the_demo_scene_is_seeded_into_an_empty_database_once(
    hub: Hub, nats_server: NatsServer, tmp_path: Path
) -> None:
    service = StorageServiceProcess(tmp_path, nats_server.url, tmp_path / "demo.db", "scene-1")
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.url) as http:
            [summary] = (await http.get("/scenes")).json()
            assert summary["scene_id"] == "scene-1"
            assert summary["locations"] == 32
            state = await scene_state(http, "scene-1")
            panel = await hub.client("storage-location", "scene-1", "interval=1")
            assert_scene_update(await panel.recv(), "scene-1", state["storage_locations"])

            await service.stop()
            await service.start()
            assert (await http.get("/scenes")).json() == [summary]
    finally:
        await service.stop()


async def test_requests_that_cannot_apply_are_refused(http: httpx.AsyncClient) -> None:
    rev = await put(http, "north", [record("north", "ST1", 1)])
    status = "/scenes/north/locations/ST1-1/status"

    assert (await http.get("/scenes/nowhere")).status_code == 404
    assert (await http.get("/scenes/north/locations/ST9-9")).status_code == 404
    missing = await http.patch("/scenes/north/locations/ST9-9/status", json={"is_locked": True})
    assert missing.status_code == 404
    assert (await http.delete("/scenes/nowhere/locations/ST1-1")).status_code == 404
    # A flag is true or false: null, a number or a misspelt field is refused.
    for body in ({"is_locked": None}, {"is_locked": 1}, {"is_lockd": True}):
        assert (await http.patch(status, json=body)).status_code == 422, body
    # Records belong to the scene of the path, once each, with known fields only.
    put_north = "/scenes/north/locations"
    assert (await http.put(put_north, json=[record("south", "ST1", 1)])).status_code == 422
    twice = [record("north", "ST2", 1), record("north", "ST2", 1)]
    assert (await http.put(put_north, json=twice)).status_code == 422
    misspelt = [record("north", "ST2", 1, is_ocupied=True)]
    assert (await http.put(put_north, json=misspelt)).status_code == 422

    # Nothing of that changed the scene.
    state = await scene_state(http, "north")
    assert state["rev"] == rev
    assert [loc["id"] for loc in state["storage_locations"]] == ["ST1-1"]
    assert state["storage_locations"][0]["is_locked"] is False


class SlowPublisher(Publisher):
    """Publishes each scene event after a random moment, as on a busy loop or a slow link."""

    def __init__(self, nc: Client) -> None:
        super().__init__(nc)
        self.rng = random.Random(2)

    async def publish_scene(self, event: SceneEvent) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.01))
        await super().publish_scene(event)


async def test_the_scene_lock_keeps_events_in_rev_order_when_publishing_is_slow(
    hub: Hub, nats_server: NatsServer, tmp_path: Path
) -> None:
    # In this process, to slow the publisher down: without the scene lock, a request that
    # committed first could then publish last, and every hub would drop its event.
    database = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'storage.db'}")
    await create_tables(database)
    nc = await nats.connect(nats_server.url)
    publisher = SlowPublisher(nc)
    try:
        service = StorageService(async_sessionmaker(database, expire_on_commit=False), publisher)
        await service.start()
        await publisher.serve_scene_snapshots(service.snapshot)
        ids = [f"ST{station}-{layer}" for station in range(1, 5) for layer in (1, 2)]
        records = [record("north", f"ST{s}", layer) for s in range(1, 5) for layer in (1, 2)]
        await service.upsert("north", [StorageLocation(**r) for r in records])
        panel = await hub.client("storage-location", "north", "interval=1")
        await panel.recv()

        changed = await asyncio.gather(
            *(
                service.change_status("north", id, changes)
                for id, changes in random_changes(ids, 40)
            )
        )
        answers = [
            {"rev": rev, "action": action.value, "storage_location": dataclasses.asdict(location)}
            for rev, action, location in changed
        ]
        await assert_every_change_seen(hub, panel, ids, answers)
    finally:
        await publisher.close()
        await nc.close()
        await database.dispose()

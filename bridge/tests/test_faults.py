"""Faults: the database away, the bridge killed mid-stream, NATS away. Nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

from databases import MariaDBServer, Site, new_sqlite_database
from harness import Hub, NatsServer
from processes import BridgeProcess
from proxy import CuttableProxy
from test_panels import api_location, location, start_bridge, subscribed


async def results_of(site: Site, task: str) -> list[str]:
    rows = await site.rows(
        "SELECT context FROM vwed_task_result WHERE task_record_id = :t ORDER BY id", t=task
    )
    return [row["context"] for row in rows]


async def scene_rows(site: Site, scene: str) -> list[dict[str, Any]]:
    rows = await site.rows("SELECT * FROM vwed_storage_location WHERE scene_id = :s", s=scene)
    return sorted((api_location(row) for row in rows), key=lambda r: r["id"])


async def test_a_database_outage_is_reported_once_and_healed(
    nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    server = MariaDBServer(tmp_path / "db")
    (tmp_path / "db").mkdir()
    server.install()
    server.start()
    site = Site(server.new_database())
    try:
        await site.add_location("scene-1", "L-1", "ST1", 1)
        bridge = await start_bridge(tmp_path, site, nats_server)
        panel = await hub.client("storage-location", "scene-1", "interval=1")
        await panel.recv_type("storage_location_update")

        server.stop(kill=True)
        await bridge.wait_status("/readyz", 503)
        await asyncio.sleep(2)  # several polls fail meanwhile, with backoff
        _, metrics = await bridge.http_get("/metrics")
        assert "vwed_bridge_database_up 0.0" in metrics

        server.start()
        await site.engine.dispose()  # the test's own pool held connections to the old server
        await bridge.wait_status("/readyz", 200)
        await site.set_location("scene-1", "L-1", is_locked=True, locked_by="task-9")
        change = await panel.recv_type("storage_location_status_change")
        assert change["action"] == "LOCK"
        update = await panel.recv_type("storage_location_update")
        assert update["data"]["storage_locations"] == [await location(site, "scene-1", "L-1")]
        # Logged once per cause, however many polls failed.
        assert bridge.logs().count("polling failed") == 1, bridge.logs()
        assert "polling works again" in bridge.logs()
        await bridge.stop()
    finally:
        await site.close()
        server.stop()


async def test_what_the_site_wrote_while_the_database_was_out_of_reach_is_published_after(
    mariadb: MariaDBServer, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    site = Site(mariadb.new_database())
    proxy = CuttableProxy(mariadb.port)
    await proxy.start()
    try:
        await site.add_location("scene-1", "L-1", "ST1", 1)
        await site.add_result("task-1", "r-0")
        bridge = BridgeProcess(
            tmp_path, site.url.replace(f":{mariadb.port}/", f":{proxy.port}/"), nats_server.url
        )
        await bridge.start()
        scene = await subscribed(hub, "storage-location-broadcast", "scene-1")
        task = await subscribed(hub, "task-execution-broadcast", "task-1")

        await proxy.cut()
        await bridge.wait_status("/readyz", 503)
        # The engines go on writing; the bridge cannot read.
        await site.set_location("scene-1", "L-1", is_locked=True, locked_by="task-1")
        await site.add_result("task-1", "r-1")
        await site.add_result("task-1", "r-2", "SUCCESS")
        await asyncio.sleep(1)
        await proxy.start()
        await bridge.wait_status("/readyz", 200)

        # Broadcast panels get each change as an event (no snapshot gives them anything).
        change = await scene.recv()
        assert (change["type"], change["action"]) == ("storage_location_status_change", "LOCK")
        assert change["new_status"] == {
            name: value
            for name, value in (await location(site, "scene-1", "L-1")).items()
            if name in change["new_status"]
        }
        contexts: list[str] = []
        while len(contexts) < 2:
            contexts.extend(r["context"] for r in (await task.recv())["data"])
        assert contexts == ["r-1", "r-2"]
        assert bridge.logs().count("polling failed") == 1, bridge.logs()
        await bridge.stop()
    finally:
        await proxy.cut()
        await site.close()


async def test_a_bridge_killed_while_the_site_writes_loses_nothing(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_result("task-1", "r-0")
    await site.add_location("scene-1", "L-1", "ST1", 1)
    await site.add_location("scene-1", "L-2", "ST1", 2)
    bridge = await start_bridge(tmp_path, site, nats_server)
    realtime = await hub.client("task-execution", "task-1", "interval=1")
    await realtime.recv_type("task_execution_update")
    broadcast = await subscribed(hub, "task-execution-broadcast", "task-1")
    scene = await hub.client("storage-location", "scene-1", "interval=1")
    await scene.recv_type("storage_location_update")

    async def keep_writing() -> None:
        for n in range(1, 41):
            await site.add_result("task-1", f"r-{n}")
            await asyncio.sleep(0.02)

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.3)
    await bridge.stop(signal.SIGKILL)  # wherever it was in its poll
    await site.set_location("scene-1", "L-1", is_occupied=True)
    await site.execute("DELETE FROM vwed_storage_location WHERE id = 'L-2'")
    await writer
    await bridge.start()

    expected = await results_of(site, "task-1")
    assert len(expected) == 41
    while True:
        update = await realtime.recv_type("task_execution_update", timeout=10)
        if [r["context"] for r in update["data"]] == expected:
            break
    # The broadcast panel saw every result, in order; what the kill caught in flight may come
    # twice (the cursor saved before the kill is behind what was published).
    seen: list[str] = []
    while not set(expected[1:]) <= set(seen):
        message = await broadcast.recv(timeout=10)
        seen.extend(r["context"] for r in message["data"])
    assert list(dict.fromkeys(seen)) == expected[1:]
    # The scene ends at the database's state: the change and the deletion made while away.
    while True:
        update = await scene.recv_type("storage_location_update", timeout=10)
        if update["data"]["storage_locations"] == await scene_rows(site, "scene-1"):
            break
    await bridge.stop()


async def test_changes_made_while_nats_is_away_reach_panels_after(
    site: Site, nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    await site.add_location("scene-1", "L-1", "ST1", 1)
    bridge = await start_bridge(tmp_path, site, nats_server)
    panel = await hub.client("storage-location", "scene-1", "interval=1")
    await panel.recv_type("storage_location_update")

    await nats_server.stop()
    await bridge.wait_status("/readyz", 503)
    await site.set_location("scene-1", "L-1", is_disabled=True)
    await asyncio.sleep(0.5)
    await nats_server.start()
    await bridge.wait_status("/readyz", 200)
    expected = await scene_rows(site, "scene-1")
    while True:
        update = await panel.recv_type("storage_location_update", timeout=15)
        if update["data"]["storage_locations"] == expected:
            break
    await bridge.stop()


async def test_a_site_schema_is_mapped_by_a_configuration_file(
    nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    database = tmp_path / "wms.db"
    with sqlite3.connect(database) as connection:
        connection.executescript(
            """
            CREATE TABLE wms_slot (
                slot_code TEXT, layer_no INTEGER, layer TEXT, station TEXT, warehouse TEXT,
                area TEXT, occupied INTEGER, locked INTEGER, disabled INTEGER, tray INTEGER,
                version INTEGER);
            CREATE TABLE task_log (log_id INTEGER PRIMARY KEY, task_id TEXT, at TEXT,
                message TEXT, state TEXT);
            INSERT INTO wms_slot VALUES ('S-1', 1, 'A-1', 'ST1', 'north', 'area-1', 0, 0, 0, 0, 1);
            INSERT INTO task_log (task_id, at, message, state)
                VALUES ('job-1', '2025-06-11T12:00:00Z', '[取货] 开始', 'RUNNING');
            """
        )
    config = tmp_path / "site.toml"
    config.write_text(
        """
[locations]
# The site's own query: only slots of real warehouses, with its names.
query = '''
SELECT slot_code AS id, layer_no, layer, station, warehouse, area, occupied, locked, disabled,
       tray, version, NULL AS blank
  FROM wms_slot WHERE warehouse IS NOT NULL'''
changed_at = "version"
[locations.columns]
layer_index = "layer_no"
layer_name = "layer"
station_name = "station"
scene_id = "warehouse"
storage_area_id = "area"
is_occupied = "occupied"
is_locked = "locked"
is_disabled = "disabled"
is_empty_tray = "tray"
operate_point_id = "blank"
storage_location_name = "blank"
area_name = "blank"
locked_by = "blank"
goods_content = "blank"
goods_weight = "blank"
goods_volume = "blank"
goods_stored_at = "blank"
goods_retrieved_at = "blank"
last_access_at = "blank"
max_weight = "blank"
max_volume = "blank"
layer_height = "blank"
tags = "blank"
description = "blank"
created_at = "blank"
updated_at = "blank"

[tasks]
table = "task_log"
[tasks.columns]
id = "log_id"
task_record_id = "task_id"
created_at = "at"
context = "message"
status = "state"
""",
        encoding="utf-8",
    )
    site = Site(f"sqlite+aiosqlite:///{database}")
    try:
        bridge = await start_bridge(tmp_path, site, nats_server, "--config", str(config))
        tasks = await hub.client("task-execution", "job-1", "interval=1")
        assert (await tasks.recv_type("task_execution_update"))["data"] == [
            {
                "created_at": "2025-06-11T12:00:00.000Z",
                "context": "[取货] 开始",
                "status": "RUNNING",
            }
        ]
        scene = await subscribed(hub, "storage-location-broadcast", "north")
        await site.execute("UPDATE wms_slot SET occupied = 1, version = 2 WHERE slot_code = 'S-1'")
        change = await scene.recv()
        assert (change["type"], change["action"], change["layer_name"]) == (
            "storage_location_status_change",
            "OCCUPY",
            "A-1",
        )
        assert change["new_status"]["id"] == "S-1"
        await bridge.stop()
    finally:
        await site.close()


async def test_a_configuration_that_names_unknown_fields_is_refused_clearly(
    site: Site, nats_server: NatsServer, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[locations.columns]\nis_ocupied = "occupied"\n', encoding="utf-8")
    bridge = BridgeProcess(tmp_path, site.url, nats_server.url, "--config", str(config))
    await bridge.start(wait_ready=False)
    assert bridge.process is not None
    assert await asyncio.to_thread(bridge.process.wait, 20) == 2
    assert "['is_ocupied'] are not fields of locations" in bridge.logs()


async def test_text_that_is_not_utf8_rejects_its_row_alone_on_sqlite(
    nats_server: NatsServer, hub: Hub, tmp_path: Path
) -> None:
    # SQLite keeps whatever bytes a writer gave it; its driver would fail the whole SELECT.
    site = Site(new_sqlite_database(tmp_path / "site.db"))
    try:
        await site.add_location("scene-1", "L-1", "ST1", 1)
        with sqlite3.connect(tmp_path / "site.db") as connection:
            connection.execute(
                "UPDATE vwed_storage_location SET goods_content = CAST(X'ff41' AS TEXT)"
                " WHERE id = 'L-1'"
            )
        await site.add_location("scene-1", "L-2", "ST1", 2)
        bridge = await start_bridge(tmp_path, site, nats_server)
        panel = await hub.client("storage-location", "scene-1", "interval=1")
        first = await panel.recv_type("storage_location_update")
        assert [loc["id"] for loc in first["data"]["storage_locations"]] == ["L-2"]
        await site.set_location("scene-1", "L-2", is_occupied=True)
        assert (await panel.recv_type("storage_location_status_change"))["action"] == "OCCUPY"
        _, metrics = await bridge.http_get("/metrics")
        assert 'vwed_bridge_rows_rejected_total{table="locations"} 1.0' in metrics
        await bridge.stop()
    finally:
        await site.close()

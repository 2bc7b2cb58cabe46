"""The task engine against a real nats-server and the real hub.

Panels of a task must end with exactly the result list in the database: realtime ones
(``/ws/task-execution/{id}``) as a whole list, broadcast ones
(``/ws/task-execution-broadcast/{id}``) one step per message, each once, in order.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import TIMESTAMP, Hub, NatsServer, WsClient, stop_process
from vwed_publisher import TaskStatus

from task_engine.config import Settings
from task_engine.engine import BLOCKS, open_engine

UPDATE_FIELDS = ["type", "task_record_id", "timestamp", "message", "data"]


def stored_results(database: Path, task_record_id: str) -> list[dict[str, str]]:
    """The task's results as the database holds them, in the order they were appended."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT created_at, context, status FROM task_results"
            " WHERE task_record_id = ? ORDER BY id",
            (task_record_id,),
        ).fetchall()
    return [{"created_at": c, "context": x, "status": s} for c, x, s in rows]


def task_statuses(database: Path) -> dict[str, str]:
    """Each task's status; empty while the engine has created the file but not its tables."""
    with sqlite3.connect(database) as db:
        try:
            return dict(db.execute("SELECT id, status FROM task_records").fetchall())
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return {}
            raise


def assert_task_update(message: dict[str, Any], task_record_id: str, data: list[Any]) -> None:
    assert list(message) == UPDATE_FIELDS
    assert message["type"] == "task_execution_update"
    assert message["task_record_id"] == task_record_id
    assert re.match(TIMESTAMP, message["timestamp"])
    assert message["message"] == "成功获取任务记录执行结果"
    assert message["data"] == data


async def assert_unknown(panel: WsClient, task_record_id: str) -> None:
    error = await panel.recv()
    assert list(error) == ["type", "task_record_id", "timestamp", "message"]
    assert error["type"] == "error"
    assert error["message"] == f"任务记录不存在: {task_record_id}"


async def test_panels_of_running_tasks_end_with_the_database_result_lists(
    hub: Hub, nats_server: NatsServer, tmp_path: Path
) -> None:
    database = tmp_path / "tasks.db"
    settings = Settings(nats_server.url, "vwed", f"sqlite+aiosqlite:///{database}")
    ids = ["task-1", "task-2", "task-3"]
    # Random(1) fails task-1 at its first block and task-2 at its fourth; task-3 succeeds.
    async with open_engine(
        settings, step_seconds=0.02, fail_rate=0.5, rng=random.Random(1)
    ) as engine:
        realtime = {id: await hub.client("task-execution", id, "interval=1") for id in ids}
        broadcast = {id: await hub.client("task-execution-broadcast", id) for id in ids}
        for id in ids:
            # The engine answers "not found" for a task not started yet; a broadcast panel
            # asks, which also shows that the hub has subscribed before the task starts.
            await assert_unknown(realtime[id], id)
            await broadcast[id].send_json({"type": "get_status"})
            await assert_unknown(broadcast[id], id)

        # Three tasks at once: their transactions interleave on one SQLite database.
        outcomes = await asyncio.gather(*(engine.run_task(id) for id in ids))
        assert outcomes == [TaskStatus.FAILED, TaskStatus.FAILED, TaskStatus.SUCCESS]

        for id in ids:
            results = stored_results(database, id)
            assert [r["status"] for r in results[-1:]] == [outcomes[ids.index(id)].value]
            # Each step once, in order, on the broadcast panel...
            for step in results:
                assert_task_update(await broadcast[id].recv(), id, [step])
            await broadcast[id].silent_for(0.2)
            # ...and the realtime panel's last list is the database's, with nothing after it.
            message = await realtime[id].recv()
            while message["data"] != results:
                message = await realtime[id].recv()
            assert_task_update(message, id, results)
        for panel in realtime.values():
            await panel.silent_for(1.2)

    # The hub never had to heal: each event came in order, at the index it expected (an index
    # past the end of its list would have made it take a fresh snapshot from the database).
    assert await hub.metric("vwed_hub_snapshot_requests_total", kind="task", reason="found") == 0
    assert await hub.metric("vwed_hub_events_rejected_total", kind="task") == 0
    assert await hub.metric("vwed_hub_events_stale_total") == 0

    assert len(stored_results(database, "task-1")) == 2
    assert len(stored_results(database, "task-2")) == 8
    assert [r["context"] for r in stored_results(database, "task-3")] == [
        block for block in BLOCKS for _ in range(2)
    ]
    assert task_statuses(database) == {"task-1": "FAILED", "task-2": "FAILED", "task-3": "SUCCESS"}


async def test_the_command_line_runs_tasks_and_answers_from_the_database(
    hub: Hub, nats_server: NatsServer, tmp_path: Path
) -> None:
    database = tmp_path / "tasks.db"
    env = {
        **os.environ,
        "VWED_NATS_URL": nats_server.url,
        "VWED_TASKS_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
    }
    log = tmp_path / "task-engine.log"

    def start(tasks: int) -> subprocess.Popen[bytes]:
        args = ["--tasks", str(tasks), "--every", "0.1", "--step-seconds", "0.02"]
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "task_engine", *args],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def until_ended(count: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            statuses = database.exists() and task_statuses(database)
            if statuses and len(statuses) == count and "RUNNING" not in statuses.values():
                return
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)

    engine = start(2)
    try:
        await until_ended(2)
        # The tasks are over; a panel opened now gets the list from the database.
        panel = await hub.client("task-execution", "task-2", "interval=1")
        assert_task_update(await panel.recv(), "task-2", stored_results(database, "task-2"))
        await stop_process(engine)
        assert engine.returncode == 0, log.read_text()

        # Started again, it numbers new tasks after those in the database.
        engine = start(1)
        await until_ended(3)
        panel = await hub.client("task-execution", "task-3", "interval=1")
        assert_task_update(await panel.recv(), "task-3", stored_results(database, "task-3"))
    finally:
        await stop_process(engine)
    assert engine.returncode == 0, log.read_text()

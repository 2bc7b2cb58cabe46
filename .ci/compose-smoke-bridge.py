"""The bridge profile's live part of .ci/compose-smoke: panels on hub-site, fed from MariaDB.

Run by .ci/compose-smoke (with its tools' virtualenv, which holds `websockets`) once the stack is
up with `--profile bridge` and healthy. The site writer (vwed-bridge-site-demo) changes a location
of scene `warehouse-demo` every second and appends a result of task `demo-task-N` every second,
four per task, with plain SQL; vwed-bridge reads MariaDB and publishes on NATS under prefix
`site`; hub-site serves the panels on the published port. Every panel is a real WebSocket client
reading the messages of the VWED API (docs/vwed-websocket-api.zh.md).

Checks, in order, failing with a message that says what broke:
  1. a realtime panel on the scene gets its state on connect (the 40 locations the writer
     seeded), and it and a broadcast panel get the writer's changes as
     storage_location_status_change;
  2. panels on a task the writer starts after they connect get task_execution_updates: the
     realtime panel ends with the task's results as the database holds them, the broadcast
     panel got each of them once, in order (the realtime panel's only error is the API's "task
     record does not exist", sent on connect, before the task's first result);
  3. `compose stop bridge` (exit 0: it flushed what it published), results written meanwhile,
     `compose start bridge`: /readyz answers 200 again, no panel disconnects, changes arrive
     again, and the results written while the bridge was away reach realtime and broadcast
     panels (published from the cursors of its state file, on the bridge-state volume);
  4. with the writer paused, the realtime panels hold exactly what the database holds: every
     location's flags, and each watched task's results.

Usage (the compose command is a JSON list, e.g. '["podman-compose", "-f", "docker-compose.yml"]'):
  python compose-smoke-bridge.py --url ws://127.0.0.1:8090 --compose JSON \
      --database vwed --db-password SECRET
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from typing import Any

from compose_smoke_common import Failure, container, now, run, say, wait_for
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SCENE = "warehouse-demo"
LOCATIONS = 40  # the writer's 10 stations of 4 layers
RESULTS_PER_TASK = 4  # the writer's steps per task; the last one is SUCCESS
FLAGS = ("is_occupied", "is_locked", "is_disabled", "is_empty_tray")
# Realtime panels ask for one update a second at most (the API's smallest interval).
INTERVAL = 1


class Panel:
    """One WebSocket client that keeps every message it gets and never reconnects.

    hub-site does not go away in this test, so any close is a failure.
    """

    def __init__(self, base_url: str, path: str) -> None:
        self.name = path
        self.url = base_url + path
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.connected = asyncio.Event()
        self.closed: str | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with connect(self.url, open_timeout=5, max_size=None) as ws:
                self.connected.set()
                async for raw in ws:
                    self.messages.append((now(), json.loads(raw)))
                self.closed = f"closed with {ws.close_code} {ws.close_reason!r}"
        except ConnectionClosed as closed:
            self.closed = f"closed: {closed}"
        except Exception as error:  # a refused or failed handshake
            self.closed = f"{type(error).__name__}: {error}"

    def of_type(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [m for t, m in self.messages if m.get("type") == kind and t >= since]

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


def results_of(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["context"], r["status"]) for m in messages for r in m["data"]]


class Smoke:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.compose: list[str] = json.loads(args.compose)
        self.panels: list[Panel] = []

    def run(self, *command: str, timeout: float = 60) -> str:
        return run(*command, timeout=timeout)

    def container(self, service: str) -> str:
        return container(self.args.project, service, stopped_too=True)

    def sql(self, query: str) -> list[list[str]]:
        """Rows of a query, read with the client in the mariadb container, as root over TCP."""
        out = self.run(
            "podman",
            "exec",
            "-e",
            f"MYSQL_PWD={self.args.db_password}",
            self.container("mariadb"),
            "mariadb",
            "--protocol=tcp",
            "--host=127.0.0.1",
            "--user=root",
            # The task results are Chinese: the container has no locale to take it from.
            "--default-character-set=utf8mb4",
            "-N",
            "-B",
            self.args.database,
            "-e",
            query,
        )
        return [line.split("\t") for line in out.splitlines()]

    def task_results(self, task: str) -> list[tuple[str, str]]:
        # The task's id is the writer's demo-task-N: safe inside the quotes.
        rows = self.sql(
            "SELECT context, status FROM vwed_task_result "
            f"WHERE task_record_id = '{task}' ORDER BY id"
        )
        return [(row[0], row[1]) for row in rows]

    def last_result_id(self) -> int:
        return int(self.sql("SELECT COALESCE(MAX(id), 0) FROM vwed_task_result")[0][0])

    def bridge_ready(self) -> bool:
        probe = subprocess.run(
            [
                "podman",
                "exec",
                self.container("bridge"),
                "python3",
                "-c",
                "import urllib.request as u; u.urlopen('http://127.0.0.1:8100/readyz', timeout=2)",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return probe.returncode == 0

    async def wait_for(self, condition: Any, seconds: float, what: str) -> None:
        def no_panel_closed() -> None:
            closed = [f"{p.name}: {p.closed}" for p in self.panels if p.closed]
            if closed:
                raise Failure(f"a panel disconnected while waiting until {what}: {closed}")

        await wait_for(condition, seconds, what, no_panel_closed, poll=0.1)

    def open(self, path: str) -> Panel:
        panel = Panel(self.args.url, path)
        self.panels.append(panel)
        panel.start()
        return panel

    # --- the checks --------------------------------------------------------------------------

    async def open_panels(self) -> None:
        self.scene = self.open(f"/ws/storage-location/{SCENE}?interval={INTERVAL}")
        self.scene_broadcast = self.open(f"/ws/storage-location-broadcast/{SCENE}")
        # Tasks the writer has not started: it writes one result a second, four per task, so
        # the task after the next one starts 4 s from now at the earliest. Panels on the three
        # tasks from there cover one before the bridge's restart, one written while it is away
        # and one after.
        rows = self.sql("SELECT task_record_id FROM vwed_task_result ORDER BY id DESC LIMIT 1")
        latest = int(rows[0][0].rsplit("-", 1)[1]) if rows else 0
        self.tasks = [f"demo-task-{latest + n}" for n in (2, 3, 4)]
        self.task_panels = {
            task: (
                self.open(f"/ws/task-execution/{task}?interval={INTERVAL}"),
                self.open(f"/ws/task-execution-broadcast/{task}"),
            )
            for task in self.tasks
        }
        await self.wait_for(
            lambda: all(p.connected.is_set() for p in self.panels),
            10,
            "every panel connects",
        )
        say(
            f"{len(self.panels)} panels on hub-site ({self.args.url}): scene {SCENE}, "
            f"tasks {self.tasks}"
        )

    async def scene_live(self) -> None:
        await self.wait_for(
            lambda: self.scene.of_type("storage_location_update"),
            10,
            "the realtime scene panel gets the scene's state",
        )
        state = self.scene.of_type("storage_location_update")[0]["data"]
        ids = {location["id"] for location in state["storage_locations"]}
        if state["total"] != LOCATIONS or len(ids) != LOCATIONS:
            raise Failure(
                f"{SCENE} should hold the writer's {LOCATIONS} locations: total {state['total']}, "
                f"{len(ids)} listed"
            )
        start = now()
        await self.wait_for(
            lambda: (
                self.scene.of_type("storage_location_status_change")
                and self.scene_broadcast.of_type("storage_location_status_change")
            ),
            10,
            "both scene panels get a storage_location_status_change",
        )
        say(
            f"{SCENE}: {LOCATIONS} locations on connect; status changes on the realtime and "
            f"broadcast panels after {now() - start:.1f}s"
        )

    def task_done(self, task: str) -> bool:
        realtime, _ = self.task_panels[task]
        updates = realtime.of_type("task_execution_update")
        return bool(updates) and len(updates[-1]["data"]) == RESULTS_PER_TASK

    async def task_complete(self, task: str, seconds: float) -> None:
        await self.wait_for(
            lambda: self.task_done(task),
            seconds,
            f"{task}'s realtime panel holds its results",
        )
        await self.wait_for(
            lambda: (
                len(results_of(self.task_panels[task][1].of_type("task_execution_update")))
                >= RESULTS_PER_TASK
            ),
            5,
            f"{task}'s broadcast panel gets its {RESULTS_PER_TASK} results",
        )
        self.check_task(task)

    def check_task(self, task: str) -> None:
        realtime, broadcast = self.task_panels[task]
        expected = self.task_results(task)
        held = results_of(realtime.of_type("task_execution_update")[-1:])
        heard = results_of(broadcast.of_type("task_execution_update"))
        if len(expected) != RESULTS_PER_TASK or expected[-1][1] != "SUCCESS":
            raise Failure(f"the database holds {expected} for {task}: not a finished demo task")
        if held != expected:
            raise Failure(f"{task}'s realtime panel holds {held}, the database {expected}")
        if heard != expected:
            raise Failure(f"{task}'s broadcast panel got {heard}, the database holds {expected}")
        # The one error the API sends here: the task did not exist yet when the realtime panel
        # connected. The connection stays open and the task's results follow.
        errors = [m["message"] for m in realtime.of_type("error") + broadcast.of_type("error")]
        if any(not message.startswith("任务记录不存在") for message in errors):
            raise Failure(f"{task}'s panels got errors: {errors}")

    async def first_task(self) -> None:
        task = self.tasks[0]
        await self.task_complete(task, 20)
        updates = len(self.task_panels[task][1].of_type("task_execution_update"))
        say(
            f"{task}: the realtime panel holds its {RESULTS_PER_TASK} results as the database "
            f"does; the broadcast panel got each once, in order ({updates} updates)"
        )

    async def restart_bridge(self) -> None:
        before = self.last_result_id()
        start = now()
        self.run(*self.compose, "stop", "bridge", timeout=40)
        bridge = self.container("bridge")
        code = self.run("podman", "inspect", "--format", "{{.State.ExitCode}}", bridge).strip()
        stopped = now() - start
        if code != "0":
            raise Failure(f"the bridge exited with {code} on stop, not 0: it did not flush")
        # Results the bridge must publish from its cursors when it is back.
        await self.wait_for(
            lambda: self.last_result_id() >= before + 2,
            10,
            "the writer writes while the bridge is away",
        )
        away = self.sql(
            f"SELECT task_record_id, id FROM vwed_task_result WHERE id > {before} ORDER BY id"
        )
        self.run(*self.compose, "start", "bridge")
        await self.wait_for(self.bridge_ready, 30, "the restarted bridge's /readyz answers 200")
        ready = now()
        say(
            f"stop bridge: exit 0 after {stopped:.1f}s; {len(away)} results written while it was "
            f"away (tasks {sorted({row[0] for row in away})}); ready again {ready - start:.1f}s "
            "after the stop"
        )
        await self.wait_for(
            lambda: (
                self.scene.of_type("storage_location_status_change", ready)
                and self.scene_broadcast.of_type("storage_location_status_change", ready)
            ),
            10,
            "both scene panels get status changes after the restart",
        )
        for task in self.tasks[1:]:
            await self.task_complete(task, 20)
        say(
            f"no panel disconnected; status changes again; {', '.join(self.tasks[1:])} reached "
            "their realtime and broadcast panels whole, each result once"
        )

    async def same_as_database(self) -> None:
        # SIGSTOP freezes the writer: one poll (0.5 s) and one realtime interval later, the
        # panels must hold what the database holds. SIGCONT resumes it afterwards.
        self.run(*self.compose, "kill", "-s", "STOP", "site-writer")
        try:
            await asyncio.sleep(INTERVAL + 2.0)
            rows = self.sql(
                f"SELECT id, {', '.join(FLAGS)} FROM vwed_storage_location "
                f"WHERE scene_id = '{SCENE}'"
            )
            database = {row[0]: [v == "1" for v in row[1:]] for row in rows}
            latest = self.scene.of_type("storage_location_update")[-1]["data"]
            held = {
                location["id"]: [bool(location[flag]) for flag in FLAGS]
                for location in latest["storage_locations"]
            }
            if held != database:
                differ = sorted(
                    k for k in set(held) | set(database) if held.get(k) != database.get(k)
                )
                raise Failure(f"the realtime scene panel differs from the database at {differ}")
            for task in self.tasks:
                self.check_task(task)
            say("with the writer paused, the realtime panels hold what the database holds")
        finally:
            self.run(*self.compose, "kill", "-s", "CONT", "site-writer")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--compose", required=True)
    parser.add_argument("--project", default="vwed-hub")
    parser.add_argument("--database", required=True)
    parser.add_argument("--db-password", required=True)
    smoke = Smoke(parser.parse_args())
    try:
        await smoke.open_panels()
        await smoke.scene_live()
        await smoke.first_task()
        await smoke.restart_bridge()
        await smoke.same_as_database()
    except Failure as failure:
        print(f"compose-smoke: FAILED: {failure}", file=sys.stderr)
        for panel in smoke.panels:
            kinds: dict[str, int] = {}
            for _, message in panel.messages:
                kinds[message.get("type", "?")] = kinds.get(message.get("type", "?"), 0) + 1
            print(f"    {panel.name}: {kinds}, {panel.closed or 'open'}", file=sys.stderr)
        return 1
    finally:
        for panel in smoke.panels:
            await panel.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

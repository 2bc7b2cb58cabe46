"""The live part of .ci/compose-smoke: monitoring panels through HAProxy while hubs and NATS fail.

Run by .ci/compose-smoke (with its tools' virtualenv, which holds `websockets`) once the compose
stack is up and healthy. Every panel is a real WebSocket client on the published HAProxy port,
offering permessage-deflate as browsers do, reading the messages of the VWED API
(docs/vwed-websocket-api.zh.md): per scene, realtime panels (endpoint 3, the full state on
connect and at most one update per interval) and broadcast panels (endpoint 4, every change).

Checks, in order, failing with a message that says what broke:
  1. every panel gets the demo's live events through HAProxy, and HAProxy spreads the panels
     over both hubs;
  2. `compose stop hub-1`: hub-1 closes exactly its own panels, with 1001, spread over the drain
     window; each reconnects through HAProxy (to hub-2) within 2 s of its close, no
     panel of hub-2 notices, and the drain ends before the grace period would kill the hub;
  3. every panel ends with the owner's state: with the owner (the demo) paused, the reconnected
     panels, those that never moved and a freshly connected one hold the same state per scene;
  4. `compose kill` of the NATS node hub-2 is connected to: no panel disconnects, and events keep
     arriving on every panel; then the states agree again as in 3.

Usage (the compose command is a JSON list, e.g. '["podman-compose", "-f", "docker-compose.yml"]'):
  python compose-smoke-panels.py --url ws://127.0.0.1:8080 --stats http://127.0.0.1:8404/;csv \
      --compose JSON --drain-spread SECONDS --grace SECONDS
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import random
import subprocess
import sys
import urllib.request
from typing import Any

from compose_smoke_common import Failure, container, now, run, say, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SCENES = ("warehouse-north", "warehouse-south", "cold-store")
REALTIME_PER_SCENE = 4
BROADCAST_PER_SCENE = 2
# Realtime panels ask for one update a second at most (the API's smallest interval).
INTERVAL = 1


class Panel:
    """One WebSocket client that stays connected and reconnects when the hub closes it.

    It keeps what a monitoring page keeps: the latest full state (realtime endpoint) and the
    times events arrived, plus every close it saw, so the checks can ask what happened when.
    """

    def __init__(self, base_url: str, scene: str, endpoint: str, number: int) -> None:
        self.scene = scene
        self.endpoint = endpoint
        self.name = f"{endpoint}/{scene}#{number}"
        path = f"/ws/{endpoint}/{scene}"
        if endpoint == "storage-location":
            path += f"?interval={INTERVAL}"
        self.url = base_url + path
        self.state: Any = None  # data of the latest storage_location_update
        self.events: list[float] = []  # arrival times of updates and status changes
        self.closes: list[tuple[float, int | None, str]] = []  # (when, code, reason)
        self.opened: list[float] = []  # when each connection (first and reconnects) opened
        self.failed_attempts = 0
        self.connected = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.fatal: str | None = None  # a wrong message: the check fails at once

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        # Reconnect at once, then back off a little: like the page, but quick, because the check
        # measures how soon a panel is back.
        backoff = 0.1
        while not self.stopping:
            try:
                async with connect(self.url, open_timeout=5, max_size=None) as ws:
                    self.opened.append(now())
                    self.connected.set()
                    backoff = 0.1
                    with contextlib.suppress(ConnectionClosed):
                        await self._read(ws)
                    self.connected.clear()
                    if not self.stopping:
                        # 1006 (abnormal) when the connection ended without a close frame.
                        self.closes.append((now(), ws.close_code, ws.close_reason or ""))
            except Failure as failure:
                self.fatal = str(failure)
                return
            except Exception as error:
                # A refused or failed handshake: the reconnect loop goes on, counted.
                self.connected.clear()
                self.failed_attempts += 1
                self.error = f"{type(error).__name__}: {error}"
            if self.stopping:
                return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 1.0)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "storage_location_update":
                if message.get("scene_id") != self.scene:
                    raise Failure(f"{self.name}: update for scene {message.get('scene_id')!r}")
                self.state = message["data"]
                self.events.append(now())
            elif kind == "storage_location_status_change":
                self.events.append(now())
            elif kind == "error":
                raise Failure(f"{self.name}: the hub sent an error: {message}")
            if self.stopping:
                await ws.close()
                return

    def events_since(self, moment: float) -> int:
        return sum(1 for t in self.events if t >= moment)

    def closes_since(self, moment: float) -> list[tuple[float, int | None, str]]:
        return [c for c in self.closes if c[0] >= moment]

    async def stop(self) -> None:
        self.stopping = True
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class Smoke:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.compose: list[str] = json.loads(args.compose)
        self.panels: list[Panel] = []

    # --- the stack ---------------------------------------------------------------------------

    def run(self, *command: str, timeout: float = 60) -> str:
        return run(*command, timeout=timeout)

    def container(self, service: str) -> str:
        return container(self.args.project, service, stopped_too=False)

    def haproxy_servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's own view of the hubs: status and current sessions, from its stats CSV."""
        with urllib.request.urlopen(self.args.stats, timeout=5) as answer:
            text = answer.read().decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == "hubs" and r["svname"] != "BACKEND"}

    def nats_node_of(self, service: str) -> str:
        """The NATS node (service name) whose /connz lists the container of `service`."""
        address = self.run(
            "podman",
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            self.container(service),
        ).strip()
        for node in ("nats-1", "nats-2", "nats-3"):
            connz = json.loads(
                self.run(
                    "podman",
                    "exec",
                    self.container(node),
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    "http://127.0.0.1:8222/connz",
                )
            )
            if any(c.get("ip") == address for c in connz.get("connections") or []):
                return node
        raise Failure(f"no NATS node lists a connection from {service} ({address})")

    # --- the checks --------------------------------------------------------------------------

    async def open_panels(self) -> None:
        for scene in SCENES:
            for n in range(REALTIME_PER_SCENE):
                self.panels.append(Panel(self.args.url, scene, "storage-location", n))
            for n in range(BROADCAST_PER_SCENE):
                self.panels.append(Panel(self.args.url, scene, "storage-location-broadcast", n))
        for panel in self.panels:
            panel.start()
            # One at a time, so that HAProxy's leastconn sees each and spreads them.
            await self.wait_for(lambda p=panel: p.connected.is_set(), 10, f"{panel.name} connects")
        say(f"{len(self.panels)} panels connected through HAProxy ({self.args.url})")

    async def wait_for(self, condition: Any, seconds: float, what: str) -> None:
        def nothing_fatal() -> None:
            for panel in self.panels:
                if panel.fatal:
                    raise Failure(panel.fatal)

        await wait_for(condition, seconds, what, nothing_fatal)

    async def live_events(self) -> None:
        start = now()
        realtime = [p for p in self.panels if p.endpoint == "storage-location"]
        await self.wait_for(
            lambda: all(p.state for p in realtime),
            10,
            "every realtime panel holds its scene's state",
        )
        await self.wait_for(
            lambda: all(p.events_since(start) for p in self.panels),
            20,
            "every panel receives a live event",
        )
        servers = self.haproxy_servers()
        held = {name: int(row["scur"]) for name, row in servers.items()}
        say(f"live events on every panel; HAProxy: {held} sessions")
        if sorted(held) != ["hub-1", "hub-2"] or min(held.values()) < 1:
            raise Failure(f"HAProxy should spread the panels over hub-1 and hub-2: {held}")
        if sum(held.values()) != len(self.panels):
            raise Failure(
                f"HAProxy holds {sum(held.values())} sessions for {len(self.panels)} panels"
            )
        self.on_hub_1 = held["hub-1"]

    async def stop_hub_1(self) -> None:
        spread, grace = self.args.drain_spread, self.args.grace
        start = now()
        stop = asyncio.create_task(
            asyncio.to_thread(
                subprocess.run,
                [*self.compose, "stop", "hub-1"],
                capture_output=True,
                text=True,
                timeout=grace + 30,
            )
        )
        # Margins: podman-compose's own start before it signals the hub (about a second), and
        # the reconnect itself (a few attempts at 0.1 s to 1 s).
        signal_margin, reconnect_margin = 3.0, 2.0
        await self.wait_for(
            lambda: (
                sum(1 for p in self.panels if p.closes_since(start)) >= self.on_hub_1
                and all(p.connected.is_set() for p in self.panels)
            ),
            spread + signal_margin + reconnect_margin + 1,
            f"hub-1's {self.on_hub_1} panels are closed and reconnected",
        )
        done = await stop
        stopped_after = now() - start
        if done.returncode != 0:
            raise Failure(f"compose stop hub-1 failed: {done.stderr.strip()}")
        moved = [p for p in self.panels if p.closes_since(start)]
        closes = [c for p in moved for c in p.closes_since(start)]
        codes = sorted({int(c[1]) if c[1] is not None else 0 for c in closes})
        first, last = (
            min(c[0] for c in closes) - start,
            max(c[0] for c in closes) - start,
        )
        back = max(p.opened[-1] for p in moved) - start
        slowest = max(p.opened[-1] - p.closes_since(start)[0][0] for p in moved)
        say(
            f"stop hub-1: {len(moved)} panels closed with {codes} between {first:.1f}s and "
            f"{last:.1f}s, all back by {back:.1f}s (drain spread {spread:.0f}s); "
            f"each back within {slowest:.2f}s of its close, "
            f"{sum(p.failed_attempts for p in moved)} refused attempts on the way; "
            f"compose stop took {stopped_after:.1f}s (grace {grace:.0f}s)"
        )
        if len(moved) != self.on_hub_1:
            raise Failure(
                f"{len(moved)} panels were closed, but hub-1 held {self.on_hub_1}: "
                "panels of hub-2 were disturbed"
            )
        if len(closes) != len(moved):
            raise Failure("a panel was closed more than once: it reconnected to the draining hub")
        if codes != [1001]:
            raise Failure(f"a drain closes with 1001 (going away), not {codes}")
        if last > spread + signal_margin:
            raise Failure(
                f"the last close came {last:.1f}s after the stop, past the {spread:.0f}s spread"
            )
        if slowest > reconnect_margin:
            raise Failure(f"a panel took {slowest:.1f}s to reconnect through HAProxy")
        # Closes at uniformly random moments: 6 or more within a tenth of the spread would be
        # a one-in-10^4 chance, or a drain that is not spread.
        if len(moved) >= 6 and last - first < spread / 10:
            raise Failure(f"the closes came within {last - first:.1f}s: the drain is not spread")
        if stopped_after >= grace:
            raise Failure(
                f"hub-1 took {stopped_after:.1f}s to stop: the grace period cut the drain"
            )
        servers = self.haproxy_servers()
        on_hub_2 = int(servers["hub-2"]["scur"])
        if servers["hub-1"]["status"].startswith("UP") or on_hub_2 != len(self.panels):
            raise Failure(
                "HAProxy should have hub-1 down and every panel on hub-2: "
                f"{ {k: (v['status'], v['scur']) for k, v in servers.items()} }"
            )

    async def same_state(self, when: str) -> None:
        """With the owner paused, every realtime panel of a scene holds the same state."""
        fresh = [Panel(self.args.url, scene, "storage-location", 99) for scene in SCENES]
        for panel in fresh:
            panel.start()
        await self.wait_for(lambda: all(p.state for p in fresh), 10, "fresh panels hold a state")
        # SIGSTOP freezes the demo (the owner): no more events, so every panel must settle on
        # the last state it published. SIGCONT resumes it afterwards.
        self.run(*self.compose, "kill", "-s", "STOP", "demo")
        try:
            await asyncio.sleep(INTERVAL + 2.0)
            for scene in SCENES:
                panels = [
                    p
                    for p in self.panels + fresh
                    if p.scene == scene and p.endpoint == "storage-location"
                ]
                states = {json.dumps(p.state, sort_keys=True) for p in panels}
                if len(states) != 1:
                    raise Failure(
                        f"{when}: the {len(panels)} realtime panels of {scene} hold "
                        f"{len(states)} different states"
                    )
                locations = panels[0].state["storage_locations"]
                if not locations:
                    raise Failure(f"{when}: {scene} has no storage locations")
            say(f"{when}: every realtime panel holds its scene's state, the same as a fresh one")
        finally:
            self.run(*self.compose, "kill", "-s", "CONT", "demo")
            for panel in fresh:
                await panel.stop()

    async def kill_nats_node(self) -> None:
        # The node hub-2 (which now holds every panel) is on: killing it makes the hub fail over
        # to another node and re-snapshot, which is the case worth testing. The demo may be on
        # the same node or another.
        node = self.nats_node_of("hub-2")
        demo_node = self.nats_node_of("demo")
        start = now()
        self.run(*self.compose, "kill", node)
        say(f"kill {node} (hub-2's NATS node; the demo's is {demo_node})")
        watch = 15.0
        await asyncio.sleep(watch)
        for panel in self.panels:
            if panel.fatal:
                raise Failure(panel.fatal)
        closed = [p.name for p in self.panels if p.closes_since(start)]
        if closed:
            raise Failure(f"panels disconnected when {node} was killed: {closed}")
        # Events after the failover: in the second half of the watch.
        late = start + watch / 2
        quiet = [p.name for p in self.panels if not p.events_since(late)]
        if quiet:
            raise Failure(f"no events in the {watch / 2:.0f}s after {node} was killed on {quiet}")
        say(f"no panel disconnected; events kept arriving on all {len(self.panels)} panels")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--compose", required=True)
    parser.add_argument("--project", default="vwed-hub")
    parser.add_argument("--drain-spread", type=float, required=True)
    parser.add_argument("--grace", type=float, required=True)
    smoke = Smoke(parser.parse_args())
    try:
        await smoke.open_panels()
        await smoke.live_events()
        await smoke.stop_hub_1()
        await smoke.same_state("after stop hub-1")
        await smoke.kill_nats_node()
        await smoke.same_state("after the NATS node was killed")
    except Failure as failure:
        print(f"compose-smoke: FAILED: {failure}", file=sys.stderr)
        for panel in smoke.panels:
            if panel.error or panel.closes:
                print(
                    f"    {panel.name}: closes {panel.closes}, failed attempts "
                    f"{panel.failed_attempts}, last error {panel.error}",
                    file=sys.stderr,
                )
        return 1
    finally:
        for panel in smoke.panels:
            await panel.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""1,000 panels on one scene: the original model against the hub fed by the bridge.

    .venv/bin/python bridge/bench/panels.py [--panels 1000] [--seconds 30] [--locations 200]

Both runs use one MariaDB server of the bench's own (Debian's mariadbd on a free port, a data
directory in a temporary folder), the same scene and the same writer, which changes one
location's status every second and notes when its COMMIT returned.

* **original**: each panel reads its scene from the database every ``interval`` (3 s, the
  original endpoint 3's default), as the original server did once per connection, through a
  pool of 20 connections, and notices the change at the first read that shows it.
* **hub**: the real hub (``VWED_HUB_BIN`` or target/debug) and ``vwed-bridge`` (a separate
  process, polling every 0.5 s) on a nats-server of the bench's own; each panel is a WebSocket
  client of ``/ws/storage-location/{scene}`` and notices the change at its
  ``storage_location_status_change``.

Reported per run: the statements the database received per second (MariaDB's ``Questions``),
and the latency from the writer's COMMIT to each panel noticing (p50, p99, max), as a table
and one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parents[1] / "publisher-sdk/python/tests")]

from databases import MariaDBServer, Site  # noqa: E402
from harness import Hub, NatsServer  # noqa: E402
from processes import BridgeProcess  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

SCENE = "scene-1"


class Writer:
    """Flips one location's ``is_occupied`` about every second; remembers each commit's time."""

    def __init__(self, site: Site, locations: int) -> None:
        self.site = site
        self.locations = locations
        self.commits: dict[tuple[str, bool], float] = {}
        """(location id, its new is_occupied) to when the COMMIT returned (time.time())."""

    async def run(self, seconds: float) -> None:
        """Write for ``seconds``."""
        occupied: dict[str, bool] = {}
        deadline = time.monotonic() + seconds
        # Each location at most once per run (there are more locations than writes): a
        # (location, value) pair names one commit, so no arrival is measured against another.
        ids = [f"L-{n}" for n in random.sample(range(self.locations), self.locations)]
        while time.monotonic() < deadline and ids:
            id = ids.pop()
            value = not occupied.get(id, False)
            occupied[id] = value
            await self.site.set_location(SCENE, id, is_occupied=value)
            self.commits[(id, value)] = time.time()
            # About once a second, at no fixed phase to the bridge's polls.
            await asyncio.sleep(random.uniform(0.5, 1.5))


async def seed(site: Site, locations: int) -> None:
    for n in range(locations):
        await site.add_location(SCENE, f"L-{n}", f"ST{n // 4}", n % 4 + 1)


async def statements_per_write(mariadb: MariaDBServer, site: Site) -> float:
    """What one of the writer's changes costs in ``Questions`` (measured, with nothing else on)."""
    before = mariadb.questions()
    for _ in range(10):
        await site.set_location(SCENE, "L-0", goods_content="calibration")
    return (mariadb.questions() - before - 1) / 10


async def measure(
    mariadb: MariaDBServer, seconds: float, writer: Writer, work: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    per_write = await statements_per_write(mariadb, writer.site)
    before = mariadb.questions()
    began = time.monotonic()
    await asyncio.gather(writer.run(seconds), work())
    elapsed = time.monotonic() - began
    # The Questions counter counts this query too, and the bench's own writes: take them out.
    statements = mariadb.questions() - before - 1 - per_write * len(writer.commits)
    return {"db_queries_per_sec": round(statements / elapsed, 1)}


def latencies(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    samples.sort()

    def at(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 1)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(samples[-1] * 1000, 1)}


async def original(
    mariadb: MariaDBServer, site: Site, panels: int, seconds: float, interval: float
) -> dict[str, Any]:
    # Panels wait for a connection as long as it takes: at 1,000 panels the queue is long.
    engine = create_async_engine(site.url, pool_size=20, max_overflow=0, pool_timeout=600)
    writer = Writer(site, 0)
    writer.locations = int(
        (await site.rows("SELECT COUNT(*) AS n FROM vwed_storage_location"))[0]["n"]
    )
    samples: list[float] = []
    statement = text("SELECT * FROM vwed_storage_location WHERE scene_id = :s")

    async def panel(stop_at: float) -> None:
        known: dict[str, bool] = {}
        await asyncio.sleep(random.random() * interval)  # panels opened at different moments
        while time.monotonic() < stop_at:
            async with engine.connect() as connection:
                rows = (await connection.execute(statement, {"s": SCENE})).mappings().all()
            now = time.time()
            for row in rows:
                value = bool(row["is_occupied"])
                if row["id"] in known and known[row["id"]] != value:
                    committed = writer.commits.get((row["id"], value))
                    if committed is not None:
                        samples.append(now - committed)
                known[row["id"]] = value
            await asyncio.sleep(interval)

    async def work() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(panel(stop_at) for _ in range(panels)))

    result = await measure(mariadb, seconds, writer, work)
    await engine.dispose()
    return {"model": "original", "panels": panels, **result, **latencies(samples)}


async def through_hub(
    mariadb: MariaDBServer, site: Site, workdir: Path, panels: int, seconds: float
) -> dict[str, Any]:
    nats = NatsServer(workdir)
    await nats.start()
    hub = Hub(workdir, nats.url)
    await hub.start()
    bridge = BridgeProcess(
        workdir, site.url, nats.url, "--poll-interval", "0.5", "--tip-interval", "5"
    )
    await bridge.start()
    writer = Writer(site, 0)
    writer.locations = int(
        (await site.rows("SELECT COUNT(*) AS n FROM vwed_storage_location"))[0]["n"]
    )
    samples: list[float] = []
    # interval=30: the periodic whole-scene updates (100 KB each here) would make this one
    # process read 30 MB/s at 1,000 panels and delay what is measured; a browser reads its own.
    url = f"ws://127.0.0.1:{hub.port}/ws/storage-location/{SCENE}?interval=30"
    clients = []
    for _ in range(panels):
        clients.append(await connect(url, max_size=None, compression=None))
    for client in clients:
        await client.recv()  # the initial state

    async def panel(client: Any, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            try:
                raw = await asyncio.wait_for(client.recv(), max(0.01, stop_at - time.monotonic()))
            except TimeoutError:
                return
            now = time.time()
            # The realtime updates (the whole scene, every 3 s) are not parsed: at 1,000 panels
            # parsing them would take this process's core and delay what is measured.
            if not raw.startswith('{"type":"storage_location_status_change"'):
                continue
            message = json.loads(raw)
            if message["type"] == "storage_location_status_change":
                status = message["new_status"]
                committed = writer.commits.get((status["id"], status["is_occupied"]))
                if committed is not None:
                    samples.append(now - committed)

    async def work() -> None:
        stop_at = time.monotonic() + seconds + 1
        await asyncio.gather(*(panel(client, stop_at) for client in clients))

    result = await measure(mariadb, seconds, writer, work)
    for client in clients:
        await client.close()
    await bridge.stop()
    await hub.stop()
    await nats.stop()
    return {"model": "hub+bridge", "panels": panels, **result, **latencies(samples)}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--panels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--locations", type=int, default=200)
    parser.add_argument("--interval", type=float, default=3.0, help="the original model's interval")
    parser.add_argument("--models", default="original,hub", help="which runs (original, hub)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vwed-bridge-bench-") as folder:
        workdir = Path(folder)
        (workdir / "db").mkdir()
        mariadb = MariaDBServer(workdir / "db")
        mariadb.install()
        mariadb.start()
        site = Site(mariadb.new_database())
        try:
            await seed(site, args.locations)
            models = args.models.split(",")
            runs = []
            if "original" in models:
                runs.append(await original(mariadb, site, args.panels, args.seconds, args.interval))
            if "hub" in models:
                runs.append(await through_hub(mariadb, site, workdir, args.panels, args.seconds))
        finally:
            await site.close()
            mariadb.stop()
    print(
        f"{'model':<12} {'panels':>6} {'db q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
        file=sys.stderr,
    )
    for run in runs:
        print(
            f"{run['model']:<12} {run['panels']:>6} {run['db_queries_per_sec']:>8} "
            f"{run['p50_ms']!s:>8} {run['p99_ms']!s:>8} {run['max_ms']!s:>8}",
            file=sys.stderr,
        )
    for run in runs:
        print(json.dumps(run))


if __name__ == "__main__":
    asyncio.run(main())

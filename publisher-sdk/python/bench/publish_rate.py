"""How fast one Python process publishes through the SDK, against raw nats-py, side by side.

    python bench/publish_rate.py [--events N] [--keys K] [--nats-url URL] [--profile]

Three runs on one connection each, the same events (status changes over K scenes):

* ``raw, pre-encoded``: nats-py publishing bytes made beforehand (the client's ceiling);
* ``raw, dict + json.dumps``: what a hand-written publisher does per event;
* ``SDK``: ``Publisher.status_change`` with a new ``LocationStatus`` per event (id checks,
  subject encoding, type checks, a hybrid-clock rev, rev order, tip bookkeeping).

Without ``--nats-url`` it starts a nats-server of its own on a free port. ``--profile`` adds a
cProfile breakdown of the SDK run. Rates count until the server has everything (a final flush).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from vwed_publisher import LocationStatus, Publisher, StatusAction, timestamp_now


def status(n: int) -> LocationStatus:
    return LocationStatus(
        id=f"L-{n % 500}",
        is_occupied=n % 2 == 0,
        is_locked=False,
        is_disabled=False,
        is_empty_tray=False,
        locked_by=None,
        goods_content="托盘 A",
        last_access_at="2025-06-11T12:00:00.000Z",
        updated_at="2025-06-11T12:00:00.000Z",
    )


def event_dict(scene: str, rev: int, n: int) -> dict[str, object]:
    return {
        "scene_id": scene,
        "rev": rev,
        "kind": "status_change",
        "layer_name": f"A-{n % 500}",
        "action": "OCCUPY",
        "timestamp": timestamp_now(),
        "new_status": {
            "id": f"L-{n % 500}",
            "is_occupied": n % 2 == 0,
            "is_locked": False,
            "is_disabled": False,
            "is_empty_tray": False,
            "locked_by": None,
            "goods_content": "托盘 A",
            "last_access_at": "2025-06-11T12:00:00.000Z",
            "updated_at": "2025-06-11T12:00:00.000Z",
        },
    }


async def raw_pre_encoded(nc: Client, events: int, keys: int) -> None:
    payloads = [
        (f"vwed.scene.s-{n % keys}.storage", json.dumps(event_dict(f"s-{n % keys}", n, n)).encode())
        for n in range(events)
    ]
    started = time.perf_counter()
    for subject, payload in payloads:
        await nc.publish(subject, payload)
    await nc.flush()
    report("raw nats-py, pre-encoded", events, started)


async def raw_dict_json(nc: Client, events: int, keys: int) -> None:
    started = time.perf_counter()
    for n in range(events):
        scene = f"s-{n % keys}"
        payload = json.dumps(event_dict(scene, time.time_ns() // 1000, n), ensure_ascii=False)
        await nc.publish(f"vwed.scene.{scene}.storage", payload.encode())
    await nc.flush()
    report("raw nats-py, dict + json.dumps", events, started)


async def sdk(nc: Client, events: int, keys: int) -> None:
    publisher = Publisher(nc)
    started = time.perf_counter()
    for n in range(events):
        await publisher.status_change(
            f"s-{n % keys}", f"A-{n % 500}", StatusAction.OCCUPY, status(n)
        )
    await publisher.flush()
    report("SDK, Publisher.status_change", events, started)
    await publisher.close()


def report(name: str, events: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    print(f"{name:34} {events / elapsed:>10,.0f} events/s  ({elapsed:.2f} s for {events:,})")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run(args: argparse.Namespace) -> None:
    server = None
    url = args.nats_url
    if url is None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise SystemExit("nats-server is not on PATH; install it or pass --nats-url")
        port = free_port()
        server = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"nats://127.0.0.1:{port}"
        await asyncio.sleep(0.3)
    try:
        runs: list[Callable[[Client, int, int], Awaitable[None]]] = [raw_pre_encoded, raw_dict_json]
        for bench in runs:
            nc = await nats.connect(url)
            await bench(nc, args.events, args.keys)
            await nc.close()
        nc = await nats.connect(url)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await sdk(nc, args.events, args.keys)
            profiler.disable()
            print()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        else:
            await sdk(nc, args.events, args.keys)
        await nc.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run (200,000)")
    parser.add_argument("--keys", type=int, default=100, help="scenes the events spread over")
    parser.add_argument("--nats-url", help="a running NATS server (default: start one)")
    parser.add_argument("--profile", action="store_true", help="cProfile the SDK run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""``/healthz``, ``/readyz`` and ``/metrics``, as the hub serves them."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .bridge import Bridge
from .metrics import Metrics


def ready(bridge: Bridge, nats_connected: bool) -> tuple[bool, str]:
    """Whether the bridge keeps panels current: started, polling, and connected to NATS."""
    if not bridge.started:
        return False, "starting: the database has not answered the first read yet"
    if not nats_connected:
        return False, "NATS is not connected"
    late = max(5.0, 4 * bridge.settings.poll_interval)
    if bridge.last_poll_ok is None or time.monotonic() - bridge.last_poll_ok > late:
        return False, "polls are failing: see the log"
    return True, "ready"


def make_app(
    bridge: Bridge, metrics: Metrics, nats_connected: Callable[[], bool]
) -> web.Application:
    """The probe and metrics routes; ``nats_connected()`` tells whether NATS is up."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        is_ready, why = ready(bridge, nats_connected())
        return web.Response(status=200 if is_ready else 503, text=why + "\n")

    async def metrics_page(_request: web.Request) -> web.Response:
        metrics.nats_connected.set(1 if nats_connected() else 0)
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app

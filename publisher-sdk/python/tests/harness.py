"""Real parts for the tests: a nats-server on a free port, the real hub binary, WebSocket clients.

Shared by the SDK's tests and by ``examples/python``'s (their conftest imports this module).
The hub binary is ``target/debug/vwed-hub`` unless ``VWED_HUB_BIN`` names another; ``.ci/test``
builds it before running pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[3]
"""The repository's root."""

TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
"""Every timestamp the hub writes: UTC ISO 8601 with milliseconds."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port``: the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def http_status(port: int, path: str) -> int | None:
    """The status of GET ``path``, or ``None`` when nothing answers (yet)."""
    try:
        return (await http_get(port, path))[0]
    except (OSError, IndexError, ValueError):
        return None


def cargo_binary(name: str, env_var: str, build_hint: str) -> Path:
    """A binary of the workspace: ``$env_var`` if set, else the debug build's."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / name
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `{build_hint}` (or .ci/test), or set {env_var}")
    return binary


async def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        for _ in range(200):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.025)
        process.kill()
    process.wait()


class NatsServer:
    """A nats-server of the test's own, on a free port; it can be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / f"nats-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.fail("nats-server is not on PATH: run .ci/test, or apt-get install nats-server")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log
            )
        await wait_for_port(self.port)

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process(self.process, signal.SIGKILL)
            self.process = None


class Hub:
    """The real ``vwed-hub`` binary on a free port, on the test's NATS."""

    def __init__(self, workdir: Path, nats_url: str, prefix: str = "vwed") -> None:
        self.port = free_port()
        self.nats_url = nats_url
        self.prefix = prefix
        self.log = workdir / f"hub-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        binary = cargo_binary("vwed-hub", "VWED_HUB_BIN", "cargo build -p vwed-hub")
        args = [
            str(binary),
            "--nats-url",
            self.nats_url,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--subject-prefix",
            self.prefix,
            "--log-format",
            "json",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while await self.http_status("/readyz") != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the hub did not become ready; its log: {self.log.read_text()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process(self.process)
            self.process = None

    async def http_get(self, path: str) -> tuple[int, str]:
        return await http_get(self.port, path)

    async def http_status(self, path: str) -> int | None:
        return await http_status(self.port, path)

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels`` (0 when it has none).

        A labelled family shows nothing before its first sample, so a name that matches nothing
        also reads 0: a test that counts on a metric staying 0 should also see it move once.
        """
        _, body = await self.http_get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    async def client(
        self, endpoint: str, id: str, query: str = "", *, compression: str | None = "deflate"
    ) -> WsClient:
        """A WebSocket client of ``/ws/<endpoint>/<id>``, the id percent-encoded as browsers do.

        Like a browser, it offers permessage-deflate (``websockets``' default) unless
        ``compression`` is None.
        """
        url = f"ws://127.0.0.1:{self.port}/ws/{endpoint}/{quote(id, safe='')}"
        if query:
            url += "?" + query
        return WsClient(await connect(url, max_size=None, open_timeout=5, compression=compression))


class WsClient:
    """A panel: reads the hub's JSON messages with a deadline."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of type ``kind``, skipping others (e.g. realtime updates)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] == kind:
                return message

    async def silent_for(self, seconds: float) -> None:
        """Fail when any message arrives within ``seconds``."""
        # asyncio's own TimeoutError: the builtin one is a different class before Python 3.11.
        with contextlib.suppress(asyncio.TimeoutError):
            message = await asyncio.wait_for(self.connection.recv(), seconds)
            raise AssertionError(f"expected no message, got {message!r}")

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def close(self) -> None:
        await self.connection.close()


# Fixtures shared by every suite that imports them into its conftest.py.
@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hub(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Hub]:
    hub = Hub(tmp_path, nats_server.url)
    await hub.start()
    yield hub
    await hub.stop()

"""The bridge as its users run it: ``python -m vwed_bridge``, configured by flags."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import free_port, http_get, http_status, stop_process


class BridgeProcess:
    """``vwed-bridge`` on a free health port, with a state file in the test's folder."""

    def __init__(self, workdir: Path, db_url: str, nats_url: str, *extra: str) -> None:
        self.port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "vwed_bridge",
            "--db-url",
            db_url,
            "--nats-url",
            nats_url,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--state-file",
            str(workdir / "bridge-state.json"),
            "--poll-interval",
            "0.2",
            "--tip-interval",
            "1",
            *extra,
        ]
        self.workdir = workdir
        self.log = workdir / "bridge.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, wait_ready: bool = True) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        if wait_ready:
            await self.wait_status("/readyz", 200)

    async def wait_status(self, path: str, status: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while await self.http_status(path) != status:
            if self.process is None or self.process.poll() is not None:
                pytest.fail(f"the bridge exited; its log:\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{path} did not answer {status}; the bridge's log:\n{self.logs()}")
            await asyncio.sleep(0.05)

    async def http_get(self, path: str) -> tuple[int, str]:
        return await http_get(self.port, path)

    async def http_status(self, path: str) -> int | None:
        return await http_status(self.port, path)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            await stop_process(self.process, sig)
            self.process = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

"""The examples run as their users run them: as separate processes, configured by environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from harness import free_port, stop_process


class StorageServiceProcess:
    """``python -m storage_service`` on a free port, with its own SQLite file; restartable."""

    def __init__(self, workdir: Path, nats_url: str, database: Path, demo_scene: str = "") -> None:
        self.port = free_port()
        self.database = database
        self.env = {
            **os.environ,
            "VWED_NATS_URL": nats_url,
            "VWED_SUBJECT_PREFIX": "vwed",
            "VWED_STORAGE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "VWED_DEMO_SCENE": demo_scene,
        }
        self.workdir = workdir
        self.log = workdir / f"storage-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the service and wait until it answers (uvicorn listens after start-up)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "storage_service", "--port", str(self.port)],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while True:
                try:
                    if (await client.get("/scenes")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the storage service did not start; its log:\n{self.logs()}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop it as uvicorn is stopped (SIGTERM), so that its shutdown runs."""
        if self.process is not None:
            await stop_process(self.process)
            self.process = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

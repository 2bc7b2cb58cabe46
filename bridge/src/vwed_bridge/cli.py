"""``vwed-bridge``: flags (each also an environment variable), logging, and the process's life."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats.errors
from aiohttp import web
from vwed_publisher import DEFAULT_TIP_INTERVAL, Publisher

from .bridge import MAX_BACKOFF, Bridge, Settings
from .config import ConfigError, load_sources
from .health import make_app
from .metrics import Metrics
from .source import make_engine

log = logging.getLogger("vwed_bridge")

_DESCRIPTION = """\
Feed vwed-hub from an existing VWED database. The bridge reads the database once per poll for
the whole site (never once per panel), publishes what changed through the publisher SDK
(status changes with the action that names them, upserts, removals, task results), and answers
the hubs' snapshot requests from the database. Panels watch the hub; the database sees the
same few queries a second however many panels there are.

Every flag can also be set by the environment variable shown with it."""

_EPILOG = """\
database URLs (SQLAlchemy, async drivers):
  mysql+aiomysql://user:password@host:3306/vwed     MySQL or MariaDB
  postgresql+asyncpg://user:password@host/vwed      PostgreSQL
  sqlite+aiosqlite:///path/to/vwed.db               SQLite

The reference schema is schema.sql; --config maps other table and column names (example.toml)."""


def _env(name: str, default: Any) -> Any:
    return os.environ.get(f"VWED_BRIDGE_{name}", default)


def parser() -> argparse.ArgumentParser:
    """The command line, with the environment's values as defaults."""
    p = argparse.ArgumentParser(
        prog="vwed-bridge",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def flag(name: str, env: str, help: str, **kwargs: Any) -> None:
        default = kwargs.pop("default", None)
        required = kwargs.pop("required", False)
        value = _env(env, default)
        shown = "" if default is None else f" (default: {default})"
        p.add_argument(
            name,
            default=value,
            # Required only when the environment does not give it either.
            required=required and value is None,
            help=f"{help}{shown} [env VWED_BRIDGE_{env}]",
            **kwargs,
        )

    flag("--db-url", "DB_URL", "the database, as a SQLAlchemy URL", required=True)
    flag("--nats-url", "NATS_URL", "NATS servers, comma-separated", default="nats://127.0.0.1:4222")
    flag("--subject-prefix", "SUBJECT_PREFIX", "the hubs' --subject-prefix", default="vwed")
    flag("--config", "CONFIG", "a TOML file mapping the site's tables and columns", type=Path)
    flag("--poll-interval", "POLL_INTERVAL", "seconds between polls", type=float, default=0.5)
    flag(
        "--lookback",
        "LOOKBACK",
        "seconds of the location cursor read again each poll (transactions that commit late)",
        type=float,
        default=5.0,
    )
    flag(
        "--full-scan-interval",
        "FULL_SCAN_INTERVAL",
        "seconds between full reads of the location table (deleted locations)",
        type=float,
        default=30.0,
    )
    flag(
        "--tip-interval",
        "TIP_INTERVAL",
        "seconds between tips of recently published keys",
        type=float,
        default=DEFAULT_TIP_INTERVAL,
    )
    flag(
        "--state-file",
        "STATE_FILE",
        "where the cursors are kept across restarts ('' for nowhere)",
        default="vwed-bridge-state.json",
    )
    flag("--listen", "LISTEN", "address of /healthz, /readyz, /metrics", default="127.0.0.1:8100")
    flag(
        "--log-format",
        "LOG_FORMAT",
        "text or json (one object per line)",
        choices=["text", "json"],
        default="text",
    )
    return p


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("VWED_BRIDGE_LOG_LEVEL", "INFO"), handlers=[handler])


class _NatsEvents:
    """nats-py's callbacks, logged once per cause (its default logs a traceback per attempt)."""

    def __init__(self) -> None:
        self.last_error: str | None = None

    async def error(self, error: Exception) -> None:
        cause = f"{type(error).__name__}: {error}"
        if cause != self.last_error:
            log.warning("NATS: %s", cause)
            self.last_error = cause

    async def disconnected(self) -> None:
        log.warning("NATS connection lost; publishing into the buffer while reconnecting")

    async def reconnected(self) -> None:
        self.last_error = None
        log.info("NATS connection is back")


async def _connect_nats(args: argparse.Namespace, stop: asyncio.Event) -> Publisher | None:
    """The publisher, once NATS answers (retried with backoff; ``None`` if stopped first)."""
    wait = 0.5
    reported = False
    events = _NatsEvents()
    while not stop.is_set():
        try:
            return await Publisher.connect(
                [url.strip() for url in args.nats_url.split(",") if url.strip()],
                prefix=args.subject_prefix,
                tip_interval=args.tip_interval,
                name="vwed-bridge",
                connect_timeout=2,
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
            )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            if not reported:
                log.warning("cannot reach NATS at %s, retrying: %s", args.nats_url, error)
                reported = True
        try:
            await asyncio.wait_for(stop.wait(), wait)
        except TimeoutError:
            wait = min(wait * 2, MAX_BACKOFF)
    return None


async def serve(args: argparse.Namespace) -> None:
    """Run the bridge until SIGTERM or SIGINT."""
    sources = load_sources(args.config)
    settings = Settings(
        poll_interval=args.poll_interval,
        lookback=args.lookback,
        full_scan_interval=args.full_scan_interval,
        state_file=Path(args.state_file) if args.state_file else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    metrics = Metrics()
    engine = make_engine(args.db_url)
    publisher = await _connect_nats(args, stop)
    if publisher is None:
        await engine.dispose()
        return
    bridge = Bridge(settings, sources, engine, publisher, metrics)
    host, _, port = args.listen.rpartition(":")
    # No access log: probes every few seconds would drown what matters.
    runner = web.AppRunner(
        make_app(bridge, metrics, lambda: publisher.nc.is_connected), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port)).start()
    log.info(
        "serving /healthz /readyz /metrics on %s; polling every %ss",
        args.listen,
        args.poll_interval,
    )
    try:
        await bridge.run(stop)
    finally:
        log.info("stopping: flushing what was published")
        try:
            await publisher.flush(5)
        except Exception as error:
            log.warning("could not flush to NATS before closing: %s", error)
        await publisher.close()
        await runner.cleanup()
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    """The ``vwed-bridge`` command."""
    args = parser().parse_args(argv)
    _configure_logging(args.log_format)
    try:
        asyncio.run(serve(args))
    except ConfigError as error:
        log.error("%s", error)
        raise SystemExit(2) from None

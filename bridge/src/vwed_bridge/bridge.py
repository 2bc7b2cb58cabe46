"""The bridge at work: it polls the database, publishes what changed, and answers snapshots.

Why the merge on every hub is exact (the README says it at length): every poll and every
snapshot read runs under one lock, and the rev of a snapshot is taken from the publisher's clock
inside it. So each event published before the snapshot has a lower rev and carries rows read
before the snapshot's read (the snapshot holds them, or newer); each event after it has a higher
rev and carries rows read after (at least as new as the snapshot's). A hub drops the first kind
and applies the second, and ends where the database is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine
from vwed_publisher import (
    Publisher,
    SceneSnapshot,
    SnapshotResponder,
    StorageLocation,
    TaskResult,
    TaskSnapshot,
    timestamp_now,
)

from .changes import (
    Appended,
    LocationMirror,
    Removed,
    Reordered,
    ResultRow,
    SceneChange,
    Seen,
    StatusChanged,
    TaskChange,
    TaskCursor,
    Upserted,
    chunks_by_size,
)
from .config import Sources
from .metrics import Metrics
from .source import (
    CHANGED_AT,
    DATABASE_NOW,
    POSITION,
    LocationStatements,
    RowError,
    TaskStatements,
    key_of,
    location_of,
    result_of,
    step_back,
)
from .state import SavedState, load_state, save_state

log = logging.getLogger("vwed_bridge")

T = TypeVar("T")
S = TypeVar("S", TaskSnapshot, SceneSnapshot)

PAYLOAD_HEADROOM = 4096
"""Bytes of an event's JSON besides its records (ids, rev, keys), kept free of the budget."""
FULL_READ_TIMEOUT = 60.0
"""Seconds a read of the whole location table may take (the start, the full scans)."""
MAX_BACKOFF = 10.0
"""The longest wait between two polls while the database or NATS fails (seconds)."""


@dataclass(frozen=True)
class Settings:
    """How the bridge polls; every field is a flag of ``vwed-bridge``."""

    poll_interval: float = 0.5
    """Seconds between polls: the longest a committed change waits to be read."""
    lookback: float = 5.0
    """Seconds of the location cursor read again each poll: a transaction that stamped its
    rows this long before it committed is still found by the next poll."""
    full_scan_interval: float = 30.0
    """Seconds between full reads of the location table, which find deleted locations and
    changes that committed later than the look-back."""
    batch: int = 5000
    """Result rows read per query at most; a full batch is followed at once by the next."""
    query_timeout: float = 10.0
    """Seconds a statement may take before it counts as a failure."""
    gap_ttl: float = 60.0
    """Seconds a missing result id is read again before it is taken for a rolled-back insert."""
    startup_tip_rows: int = 10_000
    """Without a saved cursor: the tasks of this many latest results are tipped at start."""
    state_file: Path | None = None
    """Where the cursors are kept across restarts; ``None``: nowhere."""


class Bridge:
    """Polls one database for the whole site and feeds the hubs through one publisher."""

    def __init__(
        self,
        settings: Settings,
        sources: Sources,
        engine: AsyncEngine,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        """How often and how far it reads."""
        self._engine = engine
        """The database, read through a small pool."""
        self._publisher = publisher
        """Publishes the events, tips recent keys, and issues every rev."""
        self._metrics = metrics
        """What /metrics reports."""
        self._location_sql = LocationStatements(sources.locations) if sources.locations else None
        """The location statements, or ``None`` when the site publishes no scenes."""
        self._task_sql = TaskStatements(sources.tasks) if sources.tasks else None
        """The result statements, or ``None`` when the site publishes no tasks."""
        self._one_at_a_time = asyncio.Lock()
        """Held by each poll (its reads and its publishing) and each snapshot read: the rev a
        snapshot takes inside it then separates the events it holds from those it does not."""
        self._mirror = LocationMirror()
        """The locations as published."""
        self._tasks = TaskCursor(gap_ttl=settings.gap_ttl)
        """Where the bridge is in the result table."""
        self._next_full_scan = 0.0
        """When (monotonic) the location poll reads the whole table again."""
        self._saved: SavedState | None = None
        """The cursors last written to the state file, so it is written only when they move."""
        self.started = False
        """Set once the start-up read is done and published: snapshots are served from then."""
        self.last_poll_ok: float | None = None
        """When (monotonic) a poll last succeeded: /readyz reports on it."""
        self._failing: str | None = None
        """The cause of the failure being reported, so that each cause is logged once."""
        self._responders: list[SnapshotResponder[Any]] = []
        """The snapshot responders, stopped at shutdown."""
        self._state_unwritable = False
        """Whether the last write of the state file failed (logged once until it works)."""
        self._rejected: dict[str, None] = {}
        """Rows already reported as unusable (the look-back and full scans read them again):
        each is logged and counted once. Insertion-ordered, the oldest forgotten first."""

    # --- lifetime ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Start (retrying until the database answers), then poll until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            try:
                if not self.started:
                    await self._start()
                await self.poll()
                failures = 0
                wait = self.settings.poll_interval
            except Exception as error:
                failures += 1
                self._failed(error)
                wait = min(self.settings.poll_interval * 2**failures, MAX_BACKOFF)
            self._metrics.nats_connected.set(1 if self._publisher.nc.is_connected else 0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        for responder in self._responders:
            await responder.stop()

    async def _start(self) -> None:
        saved = load_state(self.settings.state_file)
        async with self._one_at_a_time:
            if self._location_sql is not None:
                await self._start_locations(self._location_sql, saved)
            if self._task_sql is not None:
                await self._start_tasks(self._task_sql, saved)
        self._next_full_scan = time.monotonic() + self.settings.full_scan_interval
        if not self._responders:
            # Only now: a snapshot before the start-up read would not know the cursors yet.
            if self._task_sql is not None:
                self._responders.append(
                    await self._publisher.serve_task_snapshots(self.task_snapshot)
                )
            if self._location_sql is not None:
                self._responders.append(
                    await self._publisher.serve_scene_snapshots(self.scene_snapshot)
                )
        self.started = True
        self._save_state()
        log.info(
            "started: %d locations in %d scenes, results from id %d",
            len(self._mirror),
            len(self._mirror.scenes()),
            self._tasks.cursor,
        )

    async def _start_locations(self, sql: LocationStatements, saved: SavedState) -> None:
        everything = self._seen(await self._read(sql.everything(), FULL_READ_TIMEOUT))
        if saved.location_cursor is None:
            self._mirror.load(everything)
        else:
            # Rows written while the bridge was away are published as upserts, so broadcast
            # panels see them; the tips below cover the rows deleted meanwhile.
            cursor = saved.location_cursor
            self._mirror.load(s for s in everything if _at_or_before(s.changed_at, cursor))
            missed = [s for s in everything if not _at_or_before(s.changed_at, cursor)]
            for change in self._mirror.plan(missed, timestamp_now()):
                await self._publish_scene(change)
        # Every hub holding a scene from before this start takes a fresh snapshot: whatever
        # happened while no bridge was polling, panels end at the database's state.
        for scene_id in sorted(self._mirror.scenes()):
            await self._publisher.tip_scene(scene_id)
            self._metrics.events.labels("tip").inc()

    async def _start_tasks(self, sql: TaskStatements, saved: SavedState) -> None:
        if saved.task_cursor is not None:
            # The first poll publishes every result appended while the bridge was away.
            self._tasks = TaskCursor(
                saved.task_cursor, saved.task_gaps, gap_ttl=self.settings.gap_ttl
            )
            return
        highest = (await self._read_scalar(sql.highest_id())) or 0
        # No saved cursor: results may have been appended while no bridge ran. The tasks of the
        # latest results are the ones panels watch: each is tipped, and each hub holding one
        # re-snapshots. Ids missing among them may belong to transactions still open: gaps.
        lowest = max(0, highest - self.settings.startup_tip_rows)
        recent = await self._read_rows(sql.ids_since(lowest))
        present = {int(id) for id, _ in recent}
        now = time.monotonic()
        gaps = [id for id in range(lowest + 1, highest) if id not in present]
        self._tasks = TaskCursor(
            highest, gaps[-TaskCursor.MAX_GAPS :], gap_ttl=self.settings.gap_ttl
        )
        self._tasks.open_gaps(now)
        tasks: set[str] = set()
        for _, task in recent:
            try:
                tasks.add(key_of(task))
            except ValueError as error:  # an id no hub could serve
                self._reject("tasks", error)
        for task_record_id in sorted(tasks):
            await self._publisher.tip_task(task_record_id)
            self._metrics.events.labels("tip").inc()

    # --- polling -------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Read what changed since the last poll and publish it."""
        began = time.monotonic()
        try:
            if self._location_sql is not None:
                async with self._one_at_a_time:
                    await self._poll_locations(self._location_sql)
            if self._task_sql is not None:
                await self._poll_tasks(self._task_sql)
        except Exception:
            self._metrics.polls.labels("failed").inc()
            raise
        self._metrics.polls.labels("ok").inc()
        self._metrics.poll_seconds.observe(time.monotonic() - began)
        self.last_poll_ok = time.monotonic()
        if self._failing is not None:
            log.info("polling works again (after: %s)", self._failing)
            self._failing = None
        self._save_state()

    async def _poll_locations(self, sql: LocationStatements) -> None:
        full = time.monotonic() >= self._next_full_scan
        if full or self._mirror.cursor is None:
            # Scheduled before the read: a full read that keeps failing (a table too big for
            # its timeout) must not take the place of every incremental poll after it.
            self._next_full_scan = time.monotonic() + self.settings.full_scan_interval
            rows = await self._read(sql.everything(), FULL_READ_TIMEOUT)
        else:
            since = step_back(self._mirror.cursor, self.settings.lookback)
            rows = await self._read(sql.changed_since(since))
        seen = self._seen(rows)
        if seen:
            self._mirror.ceiling = _ceiling(
                rows[0][DATABASE_NOW], seen[0].changed_at, self.settings
            )
        for change in self._mirror.plan(seen, timestamp_now(), complete=full):
            await self._publish_scene(change)
        self._metrics.locations.set(len(self._mirror))

    async def _poll_tasks(self, sql: TaskStatements) -> None:
        # The lock is taken per batch, not across a backlog of them: snapshots answer between.
        while True:
            async with self._one_at_a_time:
                now = time.monotonic()
                statement = sql.after(
                    self._tasks.cursor, self._tasks.open_gaps(now), self.settings.batch
                )
                rows = [self._result_row(row) for row in await self._read(statement)]
                plan = self._tasks.plan(rows, now)
                for change in plan.changes:
                    await self._publish_task(change)
                self._tasks.commit(plan)
            self._metrics.task_gaps.set(len(self._tasks.gaps))
            if len(rows) < self.settings.batch:
                return

    # --- snapshots -----------------------------------------------------------------------------

    async def task_snapshot(self, task_record_id: str) -> TaskSnapshot | None:
        """A task's results read from the database, with a rev that makes the merge exact."""
        assert self._task_sql is not None
        rev, rows = await self._snapshot_read("task", self._task_sql.task(task_record_id))
        results: list[TaskResult] = []
        for row in rows:
            result_row = self._result_row(row)
            # The database's collation may match more than the id (trailing spaces, case):
            # those rows are another key's.
            if result_row.result is not None and result_row.task_record_id == task_record_id:
                results.append(result_row.result)
        return self._answered(
            "task", TaskSnapshot(task_record_id, rev, results) if results else None
        )

    async def scene_snapshot(self, scene_id: str) -> SceneSnapshot | None:
        """A scene's locations read from the database, with a rev that makes the merge exact."""
        assert self._location_sql is not None
        rev, rows = await self._snapshot_read("scene", self._location_sql.scene(scene_id))
        locations: list[StorageLocation] = [
            seen.location for seen in self._seen(rows) if seen.location.scene_id == scene_id
        ]
        return self._answered(
            "scene", SceneSnapshot(scene_id, rev, locations) if locations else None
        )

    async def _snapshot_read(
        self, kind: str, statement: Select[Any]
    ) -> tuple[int, Sequence[RowMapping]]:
        """A rev, then the rows, both inside the lock: see the module's docstring."""
        try:
            async with self._one_at_a_time:
                rev = self._publisher.next_rev()
                return rev, await self._read(statement)
        except Exception:
            self._metrics.snapshots.labels(kind, "failed").inc()
            raise

    def _answered(self, kind: str, snapshot: S | None) -> S | None:
        """``snapshot`` counted as found, or ``None`` (a key with no rows) counted not found."""
        self._metrics.snapshots.labels(kind, "not_found" if snapshot is None else "found").inc()
        return snapshot

    # --- publishing ----------------------------------------------------------------------------

    async def _publish_scene(self, change: SceneChange) -> None:
        publisher = self._publisher
        if isinstance(change, StatusChanged):
            await publisher.status_change(
                change.scene_id,
                change.layer_name,
                change.action,
                change.status,
                timestamp=change.timestamp,
            )
            self._metrics.events.labels("status_change").inc()
        elif isinstance(change, Upserted):
            records = [seen.location for seen in change.seen]
            for start, end in self._runs("locations", records):
                await publisher.upsert_locations(change.scene_id, records[start:end])
                self._metrics.events.labels("upsert").inc()
        elif isinstance(change, Removed):
            for start, end in self._runs("locations", change.ids):
                await publisher.remove_locations(change.scene_id, change.ids[start:end])
                self._metrics.events.labels("remove").inc()
        self._mirror.published(change)

    async def _publish_task(self, change: TaskChange) -> None:
        if isinstance(change, Appended):
            for start, end in self._runs("tasks", change.results):
                await self._publisher.append_task_results(
                    change.task_record_id, change.index + start, change.results[start:end]
                )
                self._metrics.events.labels("append").inc()
        elif isinstance(change, Reordered):
            # Its list's order changed under results already published: hubs re-snapshot.
            await self._publisher.tip_task(change.task_record_id)
            self._metrics.events.labels("tip").inc()

    def _runs(self, table: str, items: Sequence[Any]) -> list[tuple[int, int]]:
        """``items`` in runs that each fit one NATS message; the ones that never fit are reported.

        NATS refuses a message over its ``max_payload``: one such record must not stop every
        poll. A run after a record left out restarts at a later index: a hub then sees a gap
        and takes a snapshot, where the same record is missing too (the reply is refused too).
        """
        budget = max(1024, self._publisher.nc.max_payload - PAYLOAD_HEADROOM)
        sizes = [_encoded_size(item) for item in items]
        runs, too_large = chunks_by_size(sizes, budget)
        for index in too_large:
            self._reject(table, RowError(f"a record of {sizes[index]} bytes exceeds {budget}"))
        return runs

    # --- reading -------------------------------------------------------------------------------

    async def _read(
        self, statement: Select[Any], limit: float | None = None
    ) -> Sequence[RowMapping]:
        async def read() -> Sequence[RowMapping]:
            async with self._engine.connect() as connection:
                rows: Sequence[RowMapping] = (await connection.execute(statement)).mappings().all()
                return rows

        return await self._query(read, limit)

    async def _read_rows(self, statement: Select[Any]) -> Sequence[Any]:
        async def read() -> Sequence[Any]:
            async with self._engine.connect() as connection:
                rows: Sequence[Any] = (await connection.execute(statement)).all()
                return rows

        return await self._query(read)

    async def _read_scalar(self, statement: Select[Any]) -> Any:
        async def read() -> Any:
            async with self._engine.connect() as connection:
                return (await connection.execute(statement)).scalar()

        return await self._query(read)

    async def _query(self, read: Callable[[], Awaitable[T]], limit: float | None = None) -> T:
        """``read()``, failing after ``limit`` seconds (``query_timeout`` by default)."""
        try:
            value = await asyncio.wait_for(read(), limit or self.settings.query_timeout)
        except Exception:
            self._metrics.database_up.set(0)
            raise
        self._metrics.database_up.set(1)
        return value

    def _seen(self, rows: Sequence[RowMapping]) -> list[Seen]:
        seen: list[Seen] = []
        for row in rows:
            try:
                seen.append(Seen(location_of(row), row[CHANGED_AT]))
            except RowError as error:
                self._reject("locations", error)
        return seen

    def _result_row(self, row: RowMapping) -> ResultRow:
        try:
            task_record_id = key_of(row["task_record_id"])
            result: TaskResult | None = result_of(row)
        except (RowError, ValueError) as error:
            self._reject("tasks", error)
            task_record_id, result = "", None
        return ResultRow(int(row["id"]), task_record_id, int(row[POSITION]), result)

    # --- reporting -----------------------------------------------------------------------------

    def _reject(self, table: str, error: Exception) -> None:
        reason = str(error)
        if reason in self._rejected:
            return
        self._rejected[reason] = None
        if len(self._rejected) > 10_000:
            del self._rejected[next(iter(self._rejected))]
        self._metrics.rows_rejected.labels(table).inc()
        log.warning("skipped a row the API cannot carry: %s", reason)

    def _failed(self, error: Exception) -> None:
        cause = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        if cause != self._failing:
            log.warning("polling failed, retrying with backoff: %s", cause)
            self._failing = cause

    def _save_state(self) -> None:
        state = SavedState(
            location_cursor=self._mirror.cursor if self._location_sql is not None else None,
            task_cursor=self._tasks.cursor if self._task_sql is not None else None,
            task_gaps=sorted(self._tasks.gaps),
        )
        if state == self._saved or self.settings.state_file is None:
            return
        try:
            save_state(self.settings.state_file, state)
        except (OSError, TypeError, ValueError) as error:  # TypeError: a cursor JSON lacks
            if not self._state_unwritable:
                log.warning("cannot write the state file (a restart will tip instead): %s", error)
                self._state_unwritable = True
            return
        if self._state_unwritable:
            log.info("the state file is written again")
            self._state_unwritable = False
        self._saved = state


def _at_or_before(changed_at: Any, cursor: Any) -> bool:
    try:
        return bool(changed_at <= cursor)
    except TypeError:  # the column's type changed since the state was saved
        return False


def _encoded_size(item: Any) -> int:
    """About the bytes ``item`` takes in an event's JSON."""
    value = (
        dataclasses.asdict(item)
        if dataclasses.is_dataclass(item) and not isinstance(item, type)
        else item
    )
    return len(json.dumps(value, ensure_ascii=False, default=str).encode()) + 1


def _ceiling(database_now: Any, sample: Any, settings: Settings) -> Any:
    """The highest cursor value to accept: the database's clock plus the look-back.

    Only when the clock and the cursor column compare: a version number has no ceiling.
    """
    if database_now is None or type(database_now) is not type(sample):
        return None
    if isinstance(sample, datetime) and (sample.tzinfo is None) != (database_now.tzinfo is None):
        return None
    return step_back(database_now, -settings.lookback)

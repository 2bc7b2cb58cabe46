"""Running tasks through their blocks, each result stored with the task's rev and then published."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from vwed_publisher import Publisher, TaskAppend, TaskResult, TaskSnapshot, TaskStatus

from .config import Settings
from .db import TaskRecordRow, TaskResultRow, create_tables, make_engine

log = logging.getLogger(__name__)

BLOCKS = (
    "[取货] 前往货架",
    "[取货] 叉取托盘",
    "[运输] 前往站点",
    "[放货] 放下托盘",
    "[完成] 返回待命点",
)
"""The blocks every task runs through, in order."""

FAILURES = ("货架被占用", "叉取失败", "路径被阻挡", "站点无响应")
"""Why a block may fail."""


class TaskEngine:
    """Runs tasks and keeps their results in a SQL database, publishing each one to the hubs."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        *,
        step_seconds: float = 1.0,
        fail_rate: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        """An engine on the database of ``sessions``, publishing through ``publisher``.

        A block takes about ``step_seconds``; a task fails at one of its blocks with
        probability ``fail_rate``.
        """
        self._sessions = sessions
        """Opens the transactions; each appended result and each snapshot is one."""
        self._publisher = publisher
        """Issues revs and publishes events."""
        self._step_seconds = step_seconds
        """About how long a block takes."""
        self._fail_rate = fail_rate
        """How often a task fails."""
        self._rng = rng or random.Random()
        """Decides durations and failures."""

    async def start(self) -> None:
        """Make every rev issued from now on greater than every rev in the database."""
        async with self._sessions.begin() as session:
            highest = await session.scalar(select(func.max(TaskRecordRow.rev)))
        self._publisher.clock.observe(highest or 0)

    async def task_count(self) -> int:
        """How many task records the database holds (the CLI numbers new tasks after them)."""
        async with self._sessions.begin() as session:
            return await session.scalar(select(func.count()).select_from(TaskRecordRow)) or 0

    async def snapshot(self, task_record_id: str) -> TaskSnapshot | None:
        """The task's rev and full result list, read in one transaction; ``None``: unknown."""
        async with self._sessions.begin() as session:
            record = await session.get(TaskRecordRow, task_record_id)
            if record is None:
                return None
            rows = await session.scalars(
                select(TaskResultRow)
                .where(TaskResultRow.task_record_id == task_record_id)
                .order_by(TaskResultRow.id)
            )
            results = [
                TaskResult(row.created_at, row.context, TaskStatus(row.status)) for row in rows
            ]
            return TaskSnapshot(task_record_id, record.rev, results)

    async def append(self, task_record_id: str, result: TaskResult, *, ends: bool = False) -> int:
        """Append ``result`` to the task (creating it at its first), publish it; return the rev.

        ``ends``: the result's status is the task's outcome. Callers append a task's results
        one at a time, in order (``run_task`` is the task's only writer): that keeps the
        publish order the commit order, which the storage service needs a lock for.
        """
        async with self._sessions.begin() as session:
            record = await session.get(TaskRecordRow, task_record_id)
            if record is None:
                record = TaskRecordRow(
                    id=task_record_id,
                    rev=0,
                    status=TaskStatus.RUNNING.value,
                    created_at=result.created_at,
                )
                session.add(record)
            # The result's position in the task's list: the hub writes it there.
            index = await session.scalar(
                select(func.count()).where(TaskResultRow.task_record_id == task_record_id)
            )
            session.add(
                TaskResultRow(
                    task_record_id=task_record_id,
                    created_at=result.created_at,
                    context=result.context,
                    status=result.status.value,
                )
            )
            if ends:
                record.status = result.status.value
            # The rev is taken inside the transaction and stored with the result...
            record.rev = rev = self._publisher.next_rev()
        # ...and published only once the result is committed.
        await self._publisher.publish_task(TaskAppend(task_record_id, rev, index or 0, [result]))
        return rev

    async def run_task(self, task_record_id: str) -> TaskStatus:
        """Run a task through :data:`BLOCKS`; return how it ended.

        Each block appends a RUNNING result when it starts, and a SUCCESS result when it is
        done or a FAILED one (which ends the task) when it fails.
        """
        fails_at = (
            self._rng.randrange(len(BLOCKS)) if self._rng.random() < self._fail_rate else None
        )
        log.info("%s starts", task_record_id)
        for number, block in enumerate(BLOCKS):
            await self.append(task_record_id, TaskResult.now(block, TaskStatus.RUNNING))
            await asyncio.sleep(self._step_seconds * self._rng.uniform(0.5, 1.5))
            if number == fails_at:
                reason = self._rng.choice(FAILURES)
                failed = TaskResult.now(f"{block}: {reason}", TaskStatus.FAILED)
                await self.append(task_record_id, failed, ends=True)
                log.info("%s failed at %s: %s", task_record_id, block, reason)
                return TaskStatus.FAILED
            last = number == len(BLOCKS) - 1
            await self.append(task_record_id, TaskResult.now(block, TaskStatus.SUCCESS), ends=last)
        log.info("%s succeeded", task_record_id)
        return TaskStatus.SUCCESS


@asynccontextmanager
async def open_engine(
    settings: Settings,
    *,
    step_seconds: float = 1.0,
    fail_rate: float = 0.25,
    rng: random.Random | None = None,
) -> AsyncIterator[TaskEngine]:
    """A running engine: database and NATS open, task snapshots answered; all closed after."""
    database = make_engine(settings.database_url)
    await create_tables(database)
    publisher = await Publisher.connect(settings.nats_url, prefix=settings.subject_prefix)
    try:
        engine = TaskEngine(
            async_sessionmaker(database, expire_on_commit=False),
            publisher,
            step_seconds=step_seconds,
            fail_rate=fail_rate,
            rng=rng,
        )
        await engine.start()
        await publisher.serve_task_snapshots(engine.snapshot)
        yield engine
    finally:
        # Stops the snapshot responder and the tips, and flushes what was published.
        await publisher.close()
        await database.dispose()

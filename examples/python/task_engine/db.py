"""The database: task records, each with its ``rev``, and their results in order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ForeignKey, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The tables of the task engine."""


class TaskRecordRow(Base):
    """A task record: one run of a task, with the version of its result list."""

    __tablename__ = "task_records"

    id: Mapped[str] = mapped_column(primary_key=True)
    """The task record id, as panels name it."""
    rev: Mapped[int] = mapped_column(BigInteger)
    """The rev of the last result appended: written in the same transaction as that result,
    and read in the same transaction as the results when a hub asks for a snapshot."""
    status: Mapped[str]
    """RUNNING until the task ends in SUCCESS or FAILED."""
    created_at: Mapped[str]
    """When the task started (UTC ISO 8601)."""


class TaskResultRow(Base):
    """One execution result of a task; ``id`` gives the order of a task's results."""

    __tablename__ = "task_results"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task_record_id: Mapped[str] = mapped_column(ForeignKey("task_records.id"), index=True)
    created_at: Mapped[str]
    context: Mapped[str]
    status: Mapped[str]


def make_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; on SQLite, with transactions that really are transactions.

    The same as the storage service's (see ``storage_service/db.py`` for the whole story):
    Python's sqlite3 driver would begin a transaction only at the first write, so a snapshot's
    reads could see two moments; SQLAlchemy sends BEGIN IMMEDIATE itself instead, which also
    keeps concurrent tasks' read-then-write transactions from deadlocking on SQLite's one lock.
    """
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def create_tables(engine: AsyncEngine) -> None:
    """Create the tables that do not exist yet (a real engine would use migrations)."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)

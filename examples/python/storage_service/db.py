"""The database: a scene table holding each scene's ``rev``, and a storage location table.

The location table has the 27 fields of :class:`vwed_publisher.StorageLocation`, with the same
names and in the same order, so a row and a record convert field by field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from vwed_publisher import StorageLocation

LOCATION_FIELDS = tuple(field.name for field in dataclasses.fields(StorageLocation))
"""The 27 fields of a storage location, in the order panels receive them."""


class Base(DeclarativeBase):
    """The tables of the storage service."""


class SceneRow(Base):
    """A scene (a warehouse), with the version of its storage locations."""

    __tablename__ = "scenes"

    id: Mapped[str] = mapped_column(primary_key=True)
    """The scene id, as panels name it."""
    rev: Mapped[int] = mapped_column(BigInteger)
    """The rev of the scene's last change: written in the same transaction as that change, and
    read in the same transaction as the locations when a hub asks for a snapshot."""


class LocationRow(Base):
    """A storage location (one layer of a station); a location id is unique within its scene."""

    __tablename__ = "storage_locations"

    id: Mapped[str] = mapped_column(primary_key=True)
    layer_index: Mapped[int]
    layer_name: Mapped[str]
    operate_point_id: Mapped[str | None]
    station_name: Mapped[str]
    storage_location_name: Mapped[str | None]
    scene_id: Mapped[str] = mapped_column(ForeignKey("scenes.id"), primary_key=True)
    storage_area_id: Mapped[str]
    area_name: Mapped[str | None]
    is_occupied: Mapped[bool]
    is_locked: Mapped[bool]
    is_disabled: Mapped[bool]
    is_empty_tray: Mapped[bool]
    locked_by: Mapped[str | None]
    goods_content: Mapped[str | None]
    goods_weight: Mapped[int | None]
    goods_volume: Mapped[int | None]
    goods_stored_at: Mapped[str | None]
    goods_retrieved_at: Mapped[str | None]
    last_access_at: Mapped[str | None]
    max_weight: Mapped[int | None]
    max_volume: Mapped[int | None]
    layer_height: Mapped[int | None]
    tags: Mapped[str | None]
    description: Mapped[str | None]
    created_at: Mapped[str | None]
    updated_at: Mapped[str | None]

    @classmethod
    def of(cls, location: StorageLocation) -> LocationRow:
        """A new row holding ``location``."""
        return cls(**{name: getattr(location, name) for name in LOCATION_FIELDS})

    def record(self) -> StorageLocation:
        """The SDK's record of this row, ready to publish or to answer a snapshot with."""
        return StorageLocation(**{name: getattr(self, name) for name in LOCATION_FIELDS})

    def update(self, fields: dict[str, Any]) -> None:
        """Write ``fields`` (location field names to values) into this row."""
        for name, value in fields.items():
            setattr(self, name, value)


def make_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; on SQLite, with transactions that really are transactions.

    Python's sqlite3 driver (under aiosqlite) starts a transaction only at the first write, so
    the two SELECTs of a snapshot would each see the database at a different moment: a snapshot
    could pair one change's rev with another change's locations. SQLAlchemy's documented remedy
    is to turn the driver's own transaction handling off and to send BEGIN itself. It sends
    BEGIN IMMEDIATE, which takes SQLite's single write lock at once: two transactions that both
    read and then write can then never deadlock (the second waits for the first instead of
    failing with "database is locked"), and every transaction sees one state of the database.
    A server database (PostgreSQL, MySQL) needs none of this.
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
    """Create the tables that do not exist yet (a real service would use migrations)."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)

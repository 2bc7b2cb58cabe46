"""What the service does with a change: the rule that keeps every panel exact.

1. Change the locations **and** the scene's ``rev`` in one transaction, and commit.
2. Then publish the event, carrying that same rev.
3. Answer a snapshot by reading the rev and the locations in one transaction.

A hub keeps, per scene, the rev of the state it shows, and applies an event only when its rev
is above that. So a snapshot says exactly which events it already contains, and the state a
panel shows is always one the database really had.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from vwed_publisher import (
    LocationsRemove,
    LocationsUpsert,
    Publisher,
    SceneSnapshot,
    StatusAction,
    StatusChange,
    StorageLocation,
    derive_action,
    timestamp_now,
)

from .db import LocationRow, SceneRow

log = logging.getLogger(__name__)

STATUS_FIELDS = (
    "is_occupied",
    "is_locked",
    "locked_by",
    "is_disabled",
    "is_empty_tray",
    "goods_content",
)
"""The fields a status change may set."""


class NotFound(LookupError):
    """The scene or the location does not exist."""


class Invalid(ValueError):
    """The request contradicts itself (a record of another scene, an id given twice)."""


class StorageService:
    """Storage locations in a SQL database, each change published to the hubs with its rev."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], publisher: Publisher) -> None:
        """A service on the database of ``sessions``, publishing through ``publisher``."""
        self._sessions = sessions
        """Opens the transactions; each change and each snapshot is one."""
        self._publisher = publisher
        """Issues revs and publishes events."""
        self._scene_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        """One lock per scene, held from taking a rev until its event is published.

        Without it, two requests on one scene could commit in one order (revs 1 then 2) and
        publish in the other (2 then 1): every hub would drop event 1, whose rev is not above
        the 2 it has seen, and its panels would miss that change for good. Holding the lock
        across the publish makes the publish order the commit order. It orders the requests of
        this process only: when several processes serve one database, each scene needs one
        owner process. (Scenes are few, so the locks are kept.)"""

    async def start(self) -> None:
        """Make every rev issued from now on greater than every rev in the database.

        The SDK's clock starts from the wall clock; a database written by a machine whose clock
        ran ahead, or before this one's clock was set back, may hold higher revs. Events below
        them would be dropped by every hub as old news.
        """
        async with self._sessions.begin() as session:
            highest = await session.scalar(select(func.max(SceneRow.rev)))
        self._publisher.clock.observe(highest or 0)

    # --- reading --------------------------------------------------------------------------------

    async def snapshot(self, scene_id: str) -> SceneSnapshot | None:
        """The scene's rev and all its locations, read in one transaction; ``None``: unknown.

        This answers the hubs' snapshot requests (and ``GET /scenes/{scene_id}``). It takes no
        scene lock: one transaction is enough for the rev and the locations to match. A
        change committed but not yet published is in the snapshot, with its rev, and the hub
        drops its event when it comes, as already applied.
        """
        async with self._sessions.begin() as session:
            scene = await session.get(SceneRow, scene_id)
            if scene is None:
                return None
            rows = await session.scalars(
                select(LocationRow)
                .where(LocationRow.scene_id == scene_id)
                .order_by(LocationRow.station_name, LocationRow.layer_index, LocationRow.id)
            )
            return SceneSnapshot(scene_id, scene.rev, [row.record() for row in rows])

    async def location(self, scene_id: str, location_id: str) -> StorageLocation:
        """One location as it is now."""
        async with self._sessions.begin() as session:
            row = await session.get(LocationRow, (location_id, scene_id))
            if row is None:
                raise NotFound(f"no location {location_id!r} in scene {scene_id!r}")
            return row.record()

    async def scenes(self) -> list[tuple[str, int, int]]:
        """Every scene: its id, its rev and how many locations it has."""
        async with self._sessions.begin() as session:
            counts = (
                select(LocationRow.scene_id, func.count().label("n"))
                .group_by(LocationRow.scene_id)
                .subquery()
            )
            rows = await session.execute(
                select(SceneRow.id, SceneRow.rev, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.scene_id == SceneRow.id)
                .order_by(SceneRow.id)
            )
            return [(id, rev, n) for id, rev, n in rows.tuples()]

    # --- changing -------------------------------------------------------------------------------

    @asynccontextmanager
    async def _changing(self, scene_id: str) -> AsyncIterator[None]:
        # See _scene_locks: the lock spans the transaction *and* the publish after it.
        async with self._scene_locks[scene_id]:
            yield

    async def change_status(
        self, scene_id: str, location_id: str, changes: dict[str, Any]
    ) -> tuple[int, StatusAction, StorageLocation]:
        """Set status fields of one location; return the rev, the action and the location.

        ``changes`` maps names of :data:`STATUS_FIELDS` to their new values. The location's
        ``updated_at`` and ``last_access_at`` become now, which is also the event's timestamp.
        """
        unknown = set(changes) - set(STATUS_FIELDS)
        if unknown:
            raise Invalid(f"not status fields: {sorted(unknown)}")
        now = timestamp_now()
        async with self._changing(scene_id):
            async with self._sessions.begin() as session:
                scene = await session.get(SceneRow, scene_id)
                row = await session.get(LocationRow, (location_id, scene_id))
                if scene is None or row is None:
                    raise NotFound(f"no location {location_id!r} in scene {scene_id!r}")
                before = row.record()
                row.update({**changes, "updated_at": now, "last_access_at": now})
                after = row.record()
                action = derive_action(before, after)
                # The rev is taken inside the transaction and stored with the change...
                scene.rev = rev = self._publisher.next_rev()
            # ...and published only once the change is committed, still under the scene lock.
            await self._publisher.publish_scene(
                StatusChange(scene_id, rev, after.layer_name, action, after.status(), now)
            )
        log.info("%s %s/%s at rev %d", action, scene_id, location_id, rev)
        return rev, action, after

    async def upsert(self, scene_id: str, locations: Iterable[StorageLocation]) -> int:
        """Add or replace full records by id (creating the scene if needed); return the rev."""
        records = list(locations)
        ids = [record.id for record in records]
        if len(set(ids)) != len(ids):
            raise Invalid("a location id is given twice")
        for record in records:
            if record.scene_id != scene_id:
                raise Invalid(f"location {record.id!r} belongs to scene {record.scene_id!r}")
        async with self._changing(scene_id):
            async with self._sessions.begin() as session:
                scene = await session.get(SceneRow, scene_id)
                if scene is None:
                    scene = SceneRow(id=scene_id, rev=0)
                    session.add(scene)
                for record in records:
                    await session.merge(LocationRow.of(record))
                scene.rev = rev = self._publisher.next_rev()
            await self._publisher.publish_scene(LocationsUpsert(scene_id, rev, records))
        log.info("upserted %d locations in %s at rev %d", len(records), scene_id, rev)
        return rev

    async def remove(self, scene_id: str, location_id: str) -> int:
        """Remove one location; return the rev."""
        async with self._changing(scene_id):
            async with self._sessions.begin() as session:
                scene = await session.get(SceneRow, scene_id)
                row = await session.get(LocationRow, (location_id, scene_id))
                if scene is None or row is None:
                    raise NotFound(f"no location {location_id!r} in scene {scene_id!r}")
                await session.delete(row)
                scene.rev = rev = self._publisher.next_rev()
            await self._publisher.publish_scene(LocationsRemove(scene_id, rev, [location_id]))
        log.info("removed %s/%s at rev %d", scene_id, location_id, rev)
        return rev

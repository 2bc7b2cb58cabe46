"""What to publish for the rows a poll read: the bridge's logic, with no I/O and no clock.

Two pieces of bookkeeping, each fed rows and answering with the events they call for:

* :class:`LocationMirror` holds every location as last published. A row that differs from its
  mirror (its cursor column included: a row written and written back between two polls still
  changed) becomes a status change when only status fields differ, with the action named by
  the flag that flipped, or else part of its scene's upsert. A full scan also finds the rows
  that are gone.
* :class:`TaskCursor` follows the append-only result table by id. Ids are taken before commit,
  so a transaction that commits late leaves a gap below the cursor for a while: gaps are
  remembered and read again until they fill or expire. A result that fills a gap may come
  before results of its task already published: the task is tipped, and every hub takes a
  fresh snapshot.

Both plan first and are told what was published (``published`` / ``commit``): a publish that
fails leaves them as they were, and the next poll plans the same changes again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vwed_publisher import LocationStatus, StatusAction, StorageLocation, TaskResult, derive_action

STATUS_FIELDS = frozenset(f.name for f in dataclasses.fields(LocationStatus))
"""The fields a status change carries; a change to any other field is published as an upsert."""

LocationKey = tuple[str, str]
"""A location's identity: its scene and its id (unique within the scene)."""


@dataclass(frozen=True)
class Seen:
    """A location row as read: its record and its cursor value."""

    location: StorageLocation
    """The record, as the API carries it."""
    changed_at: Any
    """The cursor column's value: what tells a rewrite of the same values apart."""

    @property
    def key(self) -> LocationKey:
        """The location's identity."""
        return (self.location.scene_id, self.location.id)


# --- scene events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusChanged:
    """Publish a status change of one location."""

    scene_id: str
    layer_name: str
    action: StatusAction
    status: LocationStatus
    timestamp: str
    """When it changed: the row's ``updated_at`` when it has one, else the poll's time."""
    seen: Seen
    """The row, for the mirror once published."""


@dataclass(frozen=True)
class Upserted:
    """Publish full records of one scene, added or changed in more than their status."""

    scene_id: str
    seen: list[Seen]
    """The rows, in cursor order."""


@dataclass(frozen=True)
class Removed:
    """Publish the removal of locations of one scene."""

    scene_id: str
    ids: list[str]


SceneChange = StatusChanged | Upserted | Removed


class LocationMirror:
    """Every location as last published, and the cursor of the rows read so far."""

    def __init__(self) -> None:
        self._rows: dict[LocationKey, Seen] = {}
        """By scene and id: what panels were last told about each location."""
        self.cursor: Any = None
        """The highest cursor value published; ``None`` before the first row."""
        self.ceiling: Any = None
        """The highest value the cursor may take: the database's clock at the last read, plus
        a little. A row stamped in the future (bad data, a writer's fast clock) must not carry
        the cursor past every change still to come. ``None``: no limit (version numbers)."""

    def __len__(self) -> int:
        return len(self._rows)

    def scenes(self) -> set[str]:
        """The scenes that have at least one location."""
        return {scene for scene, _ in self._rows}

    def load(self, rows: Iterable[Seen]) -> None:
        """Take ``rows`` as published without publishing them: the state at the start."""
        for seen in rows:
            self._rows[seen.key] = seen
            self._advance(seen.changed_at)

    def plan(self, rows: Iterable[Seen], now: str, *, complete: bool = False) -> list[SceneChange]:
        """The events that bring panels from the mirror to ``rows``.

        ``complete``: ``rows`` is every location (a full scan), so a location missing from it
        was removed. ``now`` stamps status changes of rows without an ``updated_at``.
        """
        changes: list[SceneChange] = []
        upserts: dict[str, Upserted] = {}
        present: set[LocationKey] = set()
        for seen in rows:
            present.add(seen.key)
            before = self._rows.get(seen.key)
            if before == seen:
                continue  # read again (the look-back, a full scan): already published
            after = seen.location
            if before is not None and _only_status_differs(before.location, after):
                action = derive_action(before.location, after)
                stamp = after.updated_at or now
                changes.append(
                    StatusChanged(
                        after.scene_id, after.layer_name, action, after.status(), stamp, seen
                    )
                )
            else:
                upsert = upserts.get(after.scene_id)
                if upsert is None:
                    upsert = upserts[after.scene_id] = Upserted(after.scene_id, [])
                    changes.append(upsert)
                upsert.seen.append(seen)
        if complete:
            gone: dict[str, list[str]] = {}
            for scene_id, location_id in self._rows.keys() - present:
                gone.setdefault(scene_id, []).append(location_id)
            changes.extend(Removed(scene, sorted(ids)) for scene, ids in sorted(gone.items()))
        return changes

    def published(self, change: SceneChange) -> None:
        """Note that ``change`` went out: panels now hold what it says."""
        if isinstance(change, StatusChanged):
            self._note(change.seen)
        elif isinstance(change, Upserted):
            for seen in change.seen:
                self._note(seen)
        else:
            for location_id in change.ids:
                self._rows.pop((change.scene_id, location_id), None)

    def scene(self, scene_id: str) -> list[StorageLocation]:
        """A scene's locations as published (for tests and tools)."""
        return [seen.location for (scene, _), seen in self._rows.items() if scene == scene_id]

    def _note(self, seen: Seen) -> None:
        self._rows[seen.key] = seen
        self._advance(seen.changed_at)

    def _advance(self, changed_at: Any) -> None:
        if changed_at is None:
            return
        try:
            if self.ceiling is not None and changed_at > self.ceiling:
                changed_at = self.ceiling
            if self.cursor is None or changed_at > self.cursor:
                self.cursor = changed_at
        except TypeError:
            # A value of another type than the cursor's (MariaDB hands a zero date over as
            # text): the row is published, but it does not move the cursor.
            pass


def _only_status_differs(before: StorageLocation, after: StorageLocation) -> bool:
    differing = {
        f.name
        for f in dataclasses.fields(StorageLocation)
        if getattr(before, f.name) != getattr(after, f.name)
    }
    return differing <= STATUS_FIELDS


# --- task events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    """A task result row as read."""

    id: int
    """Its id: the order of results within a task, and the cursor."""
    task_record_id: str
    position: int
    """Its index in the task's list, counted by the database when it was read."""
    result: TaskResult | None
    """The result, or ``None`` for a row the API cannot carry (skipped, counted, logged)."""


@dataclass
class Appended:
    """Publish results written at ``index`` of a task's list."""

    task_record_id: str
    index: int
    results: list[TaskResult] = field(default_factory=list)


@dataclass(frozen=True)
class Reordered:
    """A result arrived below results already published for its task: tip the task."""

    task_record_id: str


TaskChange = Appended | Reordered


@dataclass
class TaskPlan:
    """The events for one batch of rows, and the cursor state to keep once they are out."""

    changes: list[TaskChange]
    cursor: int
    gaps: dict[int, float]


class TaskCursor:
    """Where the bridge is in the result table: a cursor, the gaps below it, recent tasks."""

    def __init__(self, cursor: int = 0, gaps: Iterable[int] = (), *, gap_ttl: float = 60.0) -> None:
        self.cursor = cursor
        """The highest result id read."""
        self.gaps: dict[int, float] = {gap: 0.0 for gap in gaps}
        """Ids below the cursor not seen yet, with when they were first missed: a transaction
        that took them may still commit. ``0.0``: restored from the state file."""
        self.gap_ttl = gap_ttl
        """How long a gap is read again before it is taken for a rolled-back insert."""

    MAX_GAPS = 10_000
    """Gaps beyond this many (the oldest) are given up: a batch of rolled-back inserts must not
    grow every query without bound."""

    def open_gaps(self, now: float) -> list[int]:
        """The gaps to read again at ``now`` (forgets expired ones)."""
        horizon = now - self.gap_ttl
        for gap, since in list(self.gaps.items()):
            if not since:
                self.gaps[gap] = now  # restored: its time starts now
            elif since < horizon:
                del self.gaps[gap]
        return sorted(self.gaps)

    def plan(self, rows: list[ResultRow], now: float) -> TaskPlan:
        """The events for ``rows`` (read in id order), and the state after them."""
        gaps = dict(self.gaps)
        cursor = self.cursor
        changes: list[TaskChange] = []
        open_appends: dict[str, Appended] = {}
        reordered: set[str] = set()
        for row in rows:
            gaps.pop(row.id, None)
            if row.id > cursor:
                # A jump of millions (ids burnt by a bulk rollback) leaves only the last gaps.
                for missing in range(max(cursor + 1, row.id - self.MAX_GAPS), row.id):
                    gaps[missing] = now
                cursor = row.id
            if row.id < self.cursor and row.result is not None:
                # It fills a gap: results with higher ids may already be out, at the positions
                # it now shifts. Whether or not they belong to its task (the bridge keeps no
                # such memory, which a restart would lose), the task is re-snapshotted.
                reordered.add(row.task_record_id)
            if row.result is None:
                continue
            append = open_appends.get(row.task_record_id)
            if append is None or append.index + len(append.results) != row.position:
                append = Appended(row.task_record_id, row.position)
                open_appends[row.task_record_id] = append
                changes.append(append)
            append.results.append(row.result)
        changes.extend(Reordered(task) for task in sorted(reordered))
        if len(gaps) > self.MAX_GAPS:
            for gap in sorted(gaps)[: len(gaps) - self.MAX_GAPS]:
                del gaps[gap]
        return TaskPlan(changes, cursor, gaps)

    def commit(self, plan: TaskPlan) -> None:
        """Keep the state of ``plan``: its events were all published."""
        self.cursor = plan.cursor
        self.gaps = plan.gaps


# --- sizes ------------------------------------------------------------------------------------


def chunks_by_size(sizes: list[int], budget: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Split items of ``sizes`` bytes into runs of at most ``budget`` bytes, in order.

    Returns the runs as ``(start, end)`` index ranges and the indexes of items too large to
    travel at all (each over ``budget`` alone), which no run holds: NATS refuses a message above
    its ``max_payload``, and one such record must not stop every poll.
    """
    runs: list[tuple[int, int]] = []
    too_large: list[int] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if size > budget:
            if start < index:
                runs.append((start, index))
            too_large.append(index)
            start, total = index + 1, 0
            continue
        if total + size > budget and start < index:
            runs.append((start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs, too_large

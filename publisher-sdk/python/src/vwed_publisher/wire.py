"""The JSON payloads that travel over NATS (SPEC section 3), as typed values.

Every class here writes exactly the JSON of the Rust SDK's ``wire`` module: compact, UTF-8, and
fields in wire order (``StorageLocation`` has the 27 fields of the client API's table, in that
order, because the hub forwards these records to clients as they are). The golden vectors in
``publisher-sdk/vectors/`` hold both SDKs to it.

Value types check their field types when built, so a mistake such as ``is_occupied=1`` raises
``TypeError`` in the service that made it instead of being refused, unseen, by every hub.
"""

from __future__ import annotations

import json
import json.encoder
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, ClassVar, NamedTuple

MAX_REV = 2**64 - 1
"""Revs are unsigned 64-bit integers on the wire."""
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
"""The integer fields of a storage location are signed 64-bit integers to the hub."""


def format_timestamp(moment: datetime) -> str:
    """``moment`` as the API writes every timestamp: UTC ISO 8601 with milliseconds.

    For example ``2025-06-11T12:00:00.000Z``. Milliseconds are truncated, not rounded, as in the
    Rust SDK. A naive ``datetime`` is taken to be UTC.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
        f"{moment.microsecond // 1000:03d}Z"
    )


_this_second: tuple[int, str] = (-1, "")
"""The last second :func:`timestamp_now` formatted, and its text up to the milliseconds: most
events of a second share it (formatting a datetime per event was a tenth of its cost)."""


def timestamp_now() -> str:
    """The current UTC time as the API writes every timestamp: ``2025-06-11T12:00:00.000Z``."""
    global _this_second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    second, head = _this_second
    if second != seconds:
        head = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
        _this_second = (seconds, head)
    return f"{head}{nanos // 1_000_000:03d}Z"


class TaskStatus(str, Enum):
    """How one block of a task ended, or that it is still running."""

    SUCCESS = "SUCCESS"
    """The block finished successfully."""
    FAILED = "FAILED"
    """The block failed."""
    RUNNING = "RUNNING"
    """The block is still executing."""

    def __str__(self) -> str:
        return self.value


class StatusAction(str, Enum):
    """What a status change did.

    The hub forwards any action string unchanged, so a method that takes an action also takes a
    plain ``str``; these members keep the known ones from being misspelled.
    """

    OCCUPY = "OCCUPY"
    """Goods were put in."""
    RELEASE = "RELEASE"
    """Goods were taken out."""
    LOCK = "LOCK"
    """The location was locked."""
    UNLOCK = "UNLOCK"
    """The location was unlocked."""
    ENABLE = "ENABLE"
    """The location was enabled."""
    DISABLE = "DISABLE"
    """The location was disabled."""
    SET_EMPTY_TRAY = "SET_EMPTY_TRAY"
    """An empty tray was recorded."""
    CLEAR_EMPTY_TRAY = "CLEAR_EMPTY_TRAY"
    """The empty tray mark was cleared."""
    UPDATE = "UPDATE"
    """Some other field changed."""

    def __str__(self) -> str:
        return self.value


# --- field checks ------------------------------------------------------------------------------

_Check = Callable[[Any], bool]


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return value is True or value is False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check: _Check) -> _Check:
    return lambda value: value is None or check(value)


class _Kind(NamedTuple):
    """What a field may hold."""

    exact: frozenset[type]
    """The usual types, checked first by a set lookup: values are built per event, so the
    check must cost next to nothing (it was a fifth of a status change's time as calls)."""
    check: _Check
    """The full rule, for anything else (a str subclass, an int subclass)."""
    what: str
    """How an error names it."""
    i64: bool = False
    """Whether an int must also fit a signed 64-bit integer (ints are never in ``exact``)."""


_STR = _Kind(frozenset({str}), _is_str, "str")
_BOOL = _Kind(frozenset({bool}), _is_bool, "bool")
_INT = _Kind(frozenset(), _is_int, "int", i64=True)
_OPT_STR = _Kind(frozenset({str, type(None)}), _optional(_is_str), "str or None")
_OPT_INT = _Kind(frozenset({type(None)}), _optional(_is_int), "int or None", i64=True)


def _check_fields(value: object, checks: tuple[tuple[str, _Kind], ...]) -> None:
    for name, kind in checks:
        field_value = getattr(value, name)
        if type(field_value) in kind.exact:
            continue
        if not kind.check(field_value):
            raise TypeError(
                f"{type(value).__name__}.{name} must be {kind.what}, "
                f"not {type(field_value).__name__}: {field_value!r}"
            )
        if kind.i64 and field_value is not None and not _I64_MIN <= field_value <= _I64_MAX:
            raise ValueError(
                f"{type(value).__name__}.{name} must fit a signed 64-bit integer (the hub "
                f"reads it as one), not {field_value}"
            )


def _check_rev(rev: Any) -> None:
    if not _is_int(rev):
        raise TypeError(f"rev must be int, not {type(rev).__name__}")
    if not 0 <= rev <= MAX_REV:
        raise ValueError(f"rev must be an unsigned 64-bit integer, not {rev}")


def _check_prev_rev(prev_rev: Any, rev: int) -> None:
    if prev_rev is None:
        return
    if not _is_int(prev_rev):
        raise TypeError(f"prev_rev must be int or None, not {type(prev_rev).__name__}")
    if not 0 <= prev_rev <= MAX_REV:
        raise ValueError(f"prev_rev must be an unsigned 64-bit integer, not {prev_rev}")
    # The events of a key before this one all have lower revs: a hub refuses an event whose
    # prev_rev is not below its rev as malformed, so it would be lost, unseen, on every hub.
    if not prev_rev < rev:
        raise ValueError(f"prev_rev must be below rev ({rev}), not {prev_rev}")


def _check_chain(event: TaskEvent | SceneEvent) -> None:
    """Check ``rev`` and ``prev_rev`` of an event built with a ``prev_rev``.

    Run when such an event is built (an event built without one gets its rev from the
    publisher's clock, or is checked when sent), so that a wrong chain raises where it is made.
    """
    if event.prev_rev is not None:
        _check_rev(event.rev)
        _check_prev_rev(event.prev_rev, event.rev)


def _head(key_field: str, key: str, rev: int, prev_rev: int | None) -> dict[str, Any]:
    """An event's first fields in wire order: its key, ``rev``, and ``prev_rev`` when known."""
    head: dict[str, Any] = {key_field: key, "rev": rev}
    if prev_rev is not None:
        head["prev_rev"] = prev_rev
    return head


def _check_list(name: str, items: Any, kind: type) -> None:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a list of {kind.__name__}, not {type(items).__name__}")
    # The values were checked when built, but they are mutable: what is sent is checked again,
    # or a field set wrong afterwards would be dropped, unseen, by every hub as malformed.
    check = getattr(kind, "_check", None)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{name} must hold {kind.__name__}, not {type(item).__name__}")
        if check is not None:
            check(item)


def listed(name: str, items: Any, kind: type) -> list[Any]:
    """``items`` as a new list; a lone ``str`` or ``bytes`` is refused, not split up.

    ``remove_locations(scene_id, "L-12")`` type-checks (a ``str`` is an ``Iterable[str]``), and
    ``list()`` would turn it into the removal of the locations ``L``, ``-``, ``1`` and ``2``.
    """
    if isinstance(items, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a list of {kind.__name__}, not {type(items).__name__}")
    return list(items)


# --- values ------------------------------------------------------------------------------------


_RESULT_CHECKS = (("created_at", _STR), ("context", _STR))
_TASK_STATUSES = frozenset(status.value for status in TaskStatus)


@dataclass
class TaskResult:
    """One entry of a task record's execution results."""

    created_at: str
    """When the result was recorded, UTC ISO 8601 (see :func:`timestamp_now`)."""
    context: str
    """What happened, conventionally ``[block name] description``."""
    status: TaskStatus
    """The state this result reports; a known status string is taken too."""

    def __post_init__(self) -> None:
        _check_fields(self, _RESULT_CHECKS)
        # Takes "RUNNING" as well as TaskStatus.RUNNING; anything else raises ValueError.
        self.status = TaskStatus(self.status)

    def _check(self) -> None:
        _check_fields(self, _RESULT_CHECKS)
        if self.status not in _TASK_STATUSES:
            raise ValueError(f"{self.status!r} is not a valid TaskStatus")

    @classmethod
    def now(cls, context: str, status: TaskStatus) -> TaskResult:
        """A result stamped with the current time."""
        return cls(timestamp_now(), context, status)

    def _wire(self) -> dict[str, Any]:
        return {"created_at": self.created_at, "context": self.context, "status": self.status}


_STATUS_CHECKS = (
    ("id", _STR),
    ("is_occupied", _BOOL),
    ("is_locked", _BOOL),
    ("is_disabled", _BOOL),
    ("is_empty_tray", _BOOL),
    ("locked_by", _OPT_STR),
    ("goods_content", _OPT_STR),
    ("last_access_at", _OPT_STR),
    ("updated_at", _OPT_STR),
)
_STATUS_FIELDS = tuple(name for name, _ in _STATUS_CHECKS)
_status_values = operator.attrgetter(*_STATUS_FIELDS)


@dataclass
class LocationStatus:
    """The ``new_status`` of a status change: absolute values, never deltas."""

    id: str
    """Layer id of the location that changed."""
    is_occupied: bool
    """Whether goods occupy the location."""
    is_locked: bool
    """Whether the location is locked."""
    is_disabled: bool
    """Whether the location is disabled."""
    is_empty_tray: bool
    """Whether an empty tray stands there."""
    locked_by: str | None = None
    """Who holds the lock."""
    goods_content: str | None = None
    """Description of the goods."""
    last_access_at: str | None = None
    """Last access time."""
    updated_at: str | None = None
    """Last update time."""

    def __post_init__(self) -> None:
        _check_fields(self, _STATUS_CHECKS)

    def _check(self) -> None:
        _check_fields(self, _STATUS_CHECKS)

    def _wire(self) -> dict[str, Any]:
        return dict(zip(_STATUS_FIELDS, _status_values(self), strict=True))


_LOCATION_CHECKS = (
    ("id", _STR),
    ("layer_index", _INT),
    ("layer_name", _STR),
    ("operate_point_id", _OPT_STR),
    ("station_name", _STR),
    ("storage_location_name", _OPT_STR),
    ("scene_id", _STR),
    ("storage_area_id", _STR),
    ("area_name", _OPT_STR),
    ("is_occupied", _BOOL),
    ("is_locked", _BOOL),
    ("is_disabled", _BOOL),
    ("is_empty_tray", _BOOL),
    ("locked_by", _OPT_STR),
    ("goods_content", _OPT_STR),
    ("goods_weight", _OPT_INT),
    ("goods_volume", _OPT_INT),
    ("goods_stored_at", _OPT_STR),
    ("goods_retrieved_at", _OPT_STR),
    ("last_access_at", _OPT_STR),
    ("max_weight", _OPT_INT),
    ("max_volume", _OPT_INT),
    ("layer_height", _OPT_INT),
    ("tags", _OPT_STR),
    ("description", _OPT_STR),
    ("created_at", _OPT_STR),
    ("updated_at", _OPT_STR),
)
_LOCATION_FIELDS = tuple(name for name, _ in _LOCATION_CHECKS)
_location_values = operator.attrgetter(*_LOCATION_FIELDS)


@dataclass(kw_only=True)
class StorageLocation:
    """One storage location (a layer of a station): the 27 fields of the client API, in order.

    Keyword arguments only. The flags default to a free, unlocked, enabled location and every
    optional field to ``None``.
    """

    id: str
    """Layer id; unique within a scene."""
    layer_index: int
    """Layer index within its station, from 1."""
    layer_name: str
    """Layer name."""
    operate_point_id: str | None = None
    """Operate point (action point) id."""
    station_name: str
    """Station name; panels order locations by it (naturally, numbers as numbers)."""
    storage_location_name: str | None = None
    """Storage location name."""
    scene_id: str
    """Scene the location belongs to."""
    storage_area_id: str
    """Storage area id."""
    area_name: str | None = None
    """Storage area name."""
    is_occupied: bool = False
    """Whether goods occupy the location."""
    is_locked: bool = False
    """Whether the location is locked."""
    is_disabled: bool = False
    """Whether the location is disabled."""
    is_empty_tray: bool = False
    """Whether an empty tray stands there."""
    locked_by: str | None = None
    """Who holds the lock."""
    goods_content: str | None = None
    """Description of the goods."""
    goods_weight: int | None = None
    """Goods weight, grams."""
    goods_volume: int | None = None
    """Goods volume, cubic centimetres."""
    goods_stored_at: str | None = None
    """When the goods were stored."""
    goods_retrieved_at: str | None = None
    """When the goods were retrieved."""
    last_access_at: str | None = None
    """Last access time."""
    max_weight: int | None = None
    """Maximum load, grams."""
    max_volume: int | None = None
    """Maximum volume, cubic centimetres."""
    layer_height: int | None = None
    """Layer height, millimetres."""
    tags: str | None = None
    """Tags."""
    description: str | None = None
    """Description."""
    created_at: str | None = None
    """Creation time."""
    updated_at: str | None = None
    """Last update time."""

    def __post_init__(self) -> None:
        _check_fields(self, _LOCATION_CHECKS)

    def _check(self) -> None:
        _check_fields(self, _LOCATION_CHECKS)

    def status(self) -> LocationStatus:
        """The status part of this record, as a status change carries it."""
        return LocationStatus(
            id=self.id,
            is_occupied=self.is_occupied,
            is_locked=self.is_locked,
            is_disabled=self.is_disabled,
            is_empty_tray=self.is_empty_tray,
            locked_by=self.locked_by,
            goods_content=self.goods_content,
            last_access_at=self.last_access_at,
            updated_at=self.updated_at,
        )

    def apply_status(self, status: LocationStatus) -> None:
        """Write a status change's absolute values into this record."""
        for name in _STATUS_FIELDS[1:]:
            setattr(self, name, getattr(status, name))

    def _wire(self) -> dict[str, Any]:
        return dict(zip(_LOCATION_FIELDS, _location_values(self), strict=True))


_FLAG_ACTIONS = {
    "is_occupied": (StatusAction.OCCUPY, StatusAction.RELEASE),
    "is_locked": (StatusAction.LOCK, StatusAction.UNLOCK),
    "is_disabled": (StatusAction.DISABLE, StatusAction.ENABLE),
    "is_empty_tray": (StatusAction.SET_EMPTY_TRAY, StatusAction.CLEAR_EMPTY_TRAY),
}
"""Each flag, with the action that names setting it and the one that names clearing it."""


def derive_action(
    before: LocationStatus | StorageLocation, after: LocationStatus | StorageLocation
) -> StatusAction:
    """The action that names a status change from ``before`` to ``after``.

    Exactly one flag changed: its action (``is_locked`` set: ``LOCK``, cleared: ``UNLOCK``,
    and so on; ``locked_by`` or ``goods_content`` may change along with it). No flag, or more
    than one, changed: ``UPDATE``. Panels read the absolute values in ``new_status`` either way.
    """
    flipped = [flag for flag in _FLAG_ACTIONS if getattr(before, flag) != getattr(after, flag)]
    if len(flipped) != 1:
        return StatusAction.UPDATE
    set_action, clear_action = _FLAG_ACTIONS[flipped[0]]
    return set_action if getattr(after, flipped[0]) else clear_action


# --- events ------------------------------------------------------------------------------------


@dataclass
class TaskAppend:
    """``results`` written into a task's list from ``index`` (0-based), overwriting what is there.

    Applying the same event twice changes nothing, so a hub that sees it again is unharmed.
    """

    task_record_id: str
    """The task record; the hub drops an event that is not for its subject's key."""
    rev: int
    """Version of the task's result list after this change; strictly increasing per task."""
    index: int
    """Position of the first result in the task's full list."""
    results: list[TaskResult]
    """The new results, in order."""
    prev_rev: int | None = field(default=None, kw_only=True)
    """The rev published for the key just before this event (event or tip), or ``None`` when
    unknown: then left out of the JSON. A hub that holds the key below it missed an event and
    takes a snapshot. Left ``None``, the publisher sends the rev it last sent for the key."""

    op: ClassVar[str] = "append"

    def __post_init__(self) -> None:
        _check_chain(self)

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_prev_rev(self.prev_rev, self.rev)
        if not _is_int(self.index) or not 0 <= self.index <= MAX_REV:
            raise ValueError(f"index must be a non-negative int, not {self.index!r}")
        _check_list("results", self.results, TaskResult)

    def _wire(self) -> dict[str, Any]:
        return self._wire_chained(self.prev_rev)

    def _wire_chained(self, prev_rev: int | None) -> dict[str, Any]:
        return {
            **_head("task_record_id", self.task_record_id, self.rev, prev_rev),
            "op": "append",
            "index": self.index,
            "results": self.results,
        }


@dataclass
class TaskReplace:
    """``results`` is the task's whole list."""

    task_record_id: str
    """The task record; the hub drops an event that is not for its subject's key."""
    rev: int
    """Version of the task's result list after this change; strictly increasing per task."""
    results: list[TaskResult]
    """The full list, in the order the owner appended it."""
    prev_rev: int | None = field(default=None, kw_only=True)
    """The rev published for the key just before this event (event or tip), or ``None`` when
    unknown: then left out of the JSON. A hub that holds the key below it missed an event and
    takes a snapshot. Left ``None``, the publisher sends the rev it last sent for the key."""

    op: ClassVar[str] = "replace"

    def __post_init__(self) -> None:
        _check_chain(self)

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_prev_rev(self.prev_rev, self.rev)
        _check_list("results", self.results, TaskResult)

    def _wire(self) -> dict[str, Any]:
        return self._wire_chained(self.prev_rev)

    def _wire_chained(self, prev_rev: int | None) -> dict[str, Any]:
        return {
            **_head("task_record_id", self.task_record_id, self.rev, prev_rev),
            "op": "replace",
            "results": self.results,
        }


@dataclass
class StatusChange:
    """One location's status fields changed; clients see ``storage_location_status_change``."""

    scene_id: str
    """The scene; the hub drops an event that is not for its subject's key."""
    rev: int
    """Version of the scene after this change; strictly increasing per scene."""
    layer_name: str
    """Layer name of the location."""
    action: StatusAction | str
    """What happened; any string is forwarded as it is."""
    new_status: LocationStatus
    """The location's status after the change."""
    timestamp: str = field(default_factory=timestamp_now)
    """When it happened, UTC ISO 8601; now unless given."""
    prev_rev: int | None = field(default=None, kw_only=True)
    """The rev published for the key just before this event (event or tip), or ``None`` when
    unknown: then left out of the JSON. A hub that holds the key below it missed an event and
    takes a snapshot. Left ``None``, the publisher sends the rev it last sent for the key."""

    kind: ClassVar[str] = "status_change"

    def __post_init__(self) -> None:
        _check_chain(self)

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_prev_rev(self.prev_rev, self.rev)
        _check_fields(self, (("layer_name", _STR), ("action", _STR), ("timestamp", _STR)))
        if not isinstance(self.new_status, LocationStatus):
            raise TypeError(
                f"new_status must be a LocationStatus, not {type(self.new_status).__name__}"
            )
        self.new_status._check()

    def _wire(self) -> dict[str, Any]:
        return self._wire_chained(self.prev_rev)

    def _wire_chained(self, prev_rev: int | None) -> dict[str, Any]:
        return {
            **_head("scene_id", self.scene_id, self.rev, prev_rev),
            "kind": "status_change",
            "layer_name": self.layer_name,
            "action": self.action,
            "timestamp": self.timestamp,
            "new_status": self.new_status,
        }


@dataclass
class LocationsUpsert:
    """Full records, added or replaced by id."""

    scene_id: str
    """The scene; the hub drops an event that is not for its subject's key."""
    rev: int
    """Version of the scene after this change; strictly increasing per scene."""
    storage_locations: list[StorageLocation]
    """The records as they are now."""
    prev_rev: int | None = field(default=None, kw_only=True)
    """The rev published for the key just before this event (event or tip), or ``None`` when
    unknown: then left out of the JSON. A hub that holds the key below it missed an event and
    takes a snapshot. Left ``None``, the publisher sends the rev it last sent for the key."""

    kind: ClassVar[str] = "upsert"

    def __post_init__(self) -> None:
        _check_chain(self)

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_prev_rev(self.prev_rev, self.rev)
        _check_list("storage_locations", self.storage_locations, StorageLocation)

    def _wire(self) -> dict[str, Any]:
        return self._wire_chained(self.prev_rev)

    def _wire_chained(self, prev_rev: int | None) -> dict[str, Any]:
        return {
            **_head("scene_id", self.scene_id, self.rev, prev_rev),
            "kind": "upsert",
            "storage_locations": self.storage_locations,
        }


@dataclass
class LocationsRemove:
    """Locations removed, by id."""

    scene_id: str
    """The scene; the hub drops an event that is not for its subject's key."""
    rev: int
    """Version of the scene after this change; strictly increasing per scene."""
    ids: list[str]
    """Ids of the removed locations."""
    prev_rev: int | None = field(default=None, kw_only=True)
    """The rev published for the key just before this event (event or tip), or ``None`` when
    unknown: then left out of the JSON. A hub that holds the key below it missed an event and
    takes a snapshot. Left ``None``, the publisher sends the rev it last sent for the key."""

    kind: ClassVar[str] = "remove"

    def __post_init__(self) -> None:
        _check_chain(self)

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_prev_rev(self.prev_rev, self.rev)
        _check_list("ids", self.ids, str)

    def _wire(self) -> dict[str, Any]:
        return self._wire_chained(self.prev_rev)

    def _wire_chained(self, prev_rev: int | None) -> dict[str, Any]:
        return {
            **_head("scene_id", self.scene_id, self.rev, prev_rev),
            "kind": "remove",
            "ids": self.ids,
        }


TaskEvent = TaskAppend | TaskReplace
"""A change to one task record's result list, published on ``<prefix>.task.<key>.execution``."""

SceneEvent = StatusChange | LocationsUpsert | LocationsRemove
"""A change to one scene's storage locations, published on ``<prefix>.scene.<key>.storage``."""


# --- snapshots ---------------------------------------------------------------------------------


@dataclass
class TaskSnapshot:
    """The state of one task record, as a snapshot request is answered."""

    task_record_id: str
    """The task record."""
    rev: int
    """The rev of the last event this state reflects."""
    results: list[TaskResult]
    """The task's full result list."""

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_list("results", self.results, TaskResult)

    def _wire(self) -> dict[str, Any]:
        return {
            "found": True,
            "task_record_id": self.task_record_id,
            "rev": self.rev,
            "results": self.results,
        }


@dataclass
class SceneSnapshot:
    """The state of one scene, as a snapshot request is answered."""

    scene_id: str
    """The scene."""
    rev: int
    """The rev of the last event this state reflects."""
    storage_locations: list[StorageLocation]
    """Every storage location of the scene."""

    def _check(self) -> None:
        _check_rev(self.rev)
        _check_list("storage_locations", self.storage_locations, StorageLocation)

    def _wire(self) -> dict[str, Any]:
        return {
            "found": True,
            "scene_id": self.scene_id,
            "rev": self.rev,
            "storage_locations": self.storage_locations,
        }


NOT_FOUND = b'{"found":false}'
"""The reply of an owner that does not know the key (yet)."""


# --- encoding ----------------------------------------------------------------------------------

_WIRE_TYPES = (
    TaskResult,
    LocationStatus,
    StorageLocation,
    TaskAppend,
    TaskReplace,
    StatusChange,
    LocationsUpsert,
    LocationsRemove,
    TaskSnapshot,
    SceneSnapshot,
)


def _wire_of(value: Any) -> Any:
    if isinstance(value, _WIRE_TYPES):
        return value._wire()
    raise TypeError(f"{type(value).__name__} is not part of the VWED wire contract")


def _make_encode() -> Callable[[Any], str]:
    """The fastest encoder this Python has for compact, raw-UTF-8 JSON (serde_json's format)."""
    fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_wire_of)
    # JSONEncoder.encode builds a C encoder on every call: a third of an event's encoding time.
    # Build it once instead, where the interpreter has it (CPython does); the vectors test checks
    # that both ways write the same bytes.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return fallback.encode
    try:
        c_encode = make(
            None, _wire_of, json.encoder.encode_basestring, None, ":", ",", False, False, True
        )
    except TypeError:  # another signature in another Python: take the documented way
        return fallback.encode
    return lambda value: "".join(c_encode(value, 0))


_encode = _make_encode()


def to_json(value: Any) -> bytes:
    """The exact JSON bytes of an event, a snapshot reply or a value of this module."""
    return _encode(value).encode()


def chained_event_json(event: TaskEvent | SceneEvent, last_rev: int | None) -> bytes:
    """The JSON bytes of ``event``, chained to ``last_rev`` when it names no ``prev_rev``.

    ``last_rev`` is the rev its publisher last sent for the key (event or tip), if it knows one.
    It becomes the ``prev_rev`` only when below the event's rev: an event at or below a rev
    already sent is dropped by every hub anyway, and ``prev_rev`` must stay below ``rev``. The
    event itself is left unchanged, so a caller that sends one event object again, or reuses
    it with a new rev, never sends a stale ``prev_rev`` as if it were its own.
    """
    prev_rev = event.prev_rev
    if prev_rev is None and last_rev is not None and last_rev < event.rev:
        prev_rev = last_rev
    return to_json(event._wire_chained(prev_rev))


def task_tip_json(task_record_id: str, rev: int) -> bytes:
    """A task tip: the key's latest rev and nothing else (SPEC section 3)."""
    return to_json({"task_record_id": task_record_id, "rev": rev, "op": "tip"})


def scene_tip_json(scene_id: str, rev: int) -> bytes:
    """A scene tip: the key's latest rev and nothing else (SPEC section 3)."""
    return to_json({"scene_id": scene_id, "rev": rev, "kind": "tip"})

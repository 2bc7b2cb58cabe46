"""The bridge's SQL: every statement it sends, and the conversion of rows into API values.

Statements are built with SQLAlchemy Core from the configured names, so one description serves
MySQL/MariaDB, PostgreSQL and SQLite. Each poll sends at most one statement per table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    column,
    event,
    func,
    literal_column,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from vwed_publisher import StorageLocation, TaskResult, TaskStatus, format_timestamp, validate_id

from .config import LOCATION_FIELDS, RESULT_FIELDS, LocationSource, TaskSource

CHANGED_AT = "_changed_at"
"""The label of the cursor column in a location row (it may be a field too, or not)."""
DATABASE_NOW = "_database_now"
"""The label of the database's clock in a location row: the ceiling of the cursor."""
POSITION = "_position"
"""The label of a result row's position within its task's list (0-based)."""

_BOOL_FIELDS = frozenset({"is_occupied", "is_locked", "is_disabled", "is_empty_tray"})
_INT_FIELDS = frozenset(
    {"layer_index", "goods_weight", "goods_volume", "max_weight", "max_volume", "layer_height"}
)
_TIME_FIELDS = frozenset(
    {"goods_stored_at", "goods_retrieved_at", "last_access_at", "created_at", "updated_at"}
)
"""Fields the API writes as ``2025-06-11T12:00:00.000Z``, whatever type the column has."""


class RowError(ValueError):
    """A row the API cannot carry (a missing id, a flag that is not a flag, an unknown status)."""


def make_engine(url: str) -> AsyncEngine:
    """The database engine: a small pool, connections checked before use.

    On SQLite, text that is not UTF-8 comes back as bytes instead of failing the whole SELECT
    (SQLite stores whatever a writer gave it): that row alone is then rejected, as on the
    other databases, whose drivers never hand over undecodable text.
    """
    engine = create_async_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _lenient_text(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.text_factory = _decoded_or_bytes

    return engine


def _decoded_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


# --- statements --------------------------------------------------------------------------------


def _from(name: str, query: str | None, columns: Sequence[str], alias: str) -> FromClause:
    """The configured table or query, under ``alias``, with ``columns`` addressable."""
    if query is not None:
        return text(query).columns(*(column(c) for c in columns)).subquery(alias)
    schema, _, bare = name.rpartition(".")
    return table(bare, *(column(c) for c in columns), schema=schema or None).alias(alias)


class LocationStatements:
    """The statements that read storage locations."""

    def __init__(self, source: LocationSource) -> None:
        self._source = source
        """The names to read."""
        columns = sorted({source.column(f) for f in LOCATION_FIELDS} | {source.changed_at})
        self._rows = _from(source.table, source.query, columns, "src")
        """The locations, as a table or the site's query."""
        self._changed_at = self._rows.c[source.changed_at]
        """The cursor column."""
        self._select: Select[Any] = select(
            *(self._rows.c[source.column(f)].label(f) for f in LOCATION_FIELDS),
            self._changed_at.label(CHANGED_AT),
            # As the driver returns it (no type of SQLAlchemy's that would parse SQLite's text):
            # it is compared with the cursor column, which comes back untyped too.
            literal_column("CURRENT_TIMESTAMP").label(DATABASE_NOW),
        )
        """Every location column, named as the API names it, and the cursor."""

    def changed_since(self, since: Any) -> Select[Any]:
        """The rows whose cursor is at or after ``since``, oldest first."""
        return self._select.where(self._changed_at >= since).order_by(self._changed_at)

    def everything(self) -> Select[Any]:
        """Every row: the start, and the full scans that find deleted rows."""
        return self._select

    def scene(self, scene_id: str) -> Select[Any]:
        """A scene's rows, as a snapshot answers them."""
        scene = self._rows.c[self._source.column("scene_id")]
        return self._select.where(scene == scene_id)


class TaskStatements:
    """The statements that read task results."""

    def __init__(self, source: TaskSource) -> None:
        columns = sorted({source.column(f) for f in RESULT_FIELDS})
        self._rows = _from(source.table, source.query, columns, "r")
        """The result rows, as a table or the site's query."""
        self._earlier = _from(source.table, source.query, columns, "r2")
        """The same rows again, to count the results of a task before a given one."""
        self._id = self._rows.c[source.column("id")]
        self._task = self._rows.c[source.column("task_record_id")]
        position = (
            select(func.count())
            .select_from(self._earlier)
            .where(
                self._earlier.c[source.column("task_record_id")] == self._task,
                self._earlier.c[source.column("id")] < self._id,
                _carried(self._earlier, source),
            )
            .scalar_subquery()
        )
        self._carried = _carried(self._rows, source)
        """Whether a row is one the API can carry: others are skipped everywhere, and are
        not counted in the positions either, so that appends and snapshots agree."""
        self._select: Select[Any] = select(
            *(self._rows.c[source.column(f)].label(f) for f in RESULT_FIELDS),
            position.label(POSITION),
        )
        """A result row with its position in its task's list, counted by the database: the
        index of its append, with no state in the bridge that could drift from the table."""

    def after(self, cursor: int, gaps: Sequence[int], limit: int) -> Select[Any]:
        """Rows above ``cursor``, and the rows of ``gaps`` that have appeared, by id."""
        condition: ColumnElement[bool] = self._id > cursor
        if gaps:
            condition = or_(condition, self._id.in_(gaps))
        return self._select.where(condition).order_by(self._id).limit(limit)

    def highest_id(self) -> Select[Any]:
        """The highest result id: where a bridge without a saved cursor starts."""
        return select(func.max(self._id))

    def ids_since(self, lowest_id: int) -> Select[Any]:
        """The ids and tasks of the results with an id above ``lowest_id``."""
        return select(self._id.label("id"), self._task.label("task_record_id")).where(
            self._id > lowest_id
        )

    def task(self, task_record_id: str) -> Select[Any]:
        """A task's results in list order, as a snapshot answers them."""
        return self._select.where(self._task == task_record_id, self._carried).order_by(self._id)


def _carried(rows: FromClause, source: TaskSource) -> ColumnElement[bool]:
    """A result row has a known status and its two texts (``result_of`` then takes it)."""
    return and_(
        func.upper(func.trim(rows.c[source.column("status")])).in_([s.value for s in TaskStatus]),
        rows.c[source.column("created_at")].is_not(None),
        rows.c[source.column("context")].is_not(None),
    )


# --- values ------------------------------------------------------------------------------------


def location_of(row: Mapping[Any, Any]) -> StorageLocation:
    """The API's record of a location row; :class:`RowError` if the API cannot carry it."""
    try:
        values = {name: _field(name, row[name]) for name in LOCATION_FIELDS}
        validate_id(values["scene_id"])
        return StorageLocation(**values)
    except (TypeError, ValueError, ArithmeticError) as error:
        raise RowError(f"location {row.get('scene_id')}/{row.get('id')}: {error}") from error


def result_of(row: Mapping[Any, Any]) -> TaskResult:
    """The API's record of a result row; :class:`RowError` if the API cannot carry it."""
    try:
        validate_id(_text(row["task_record_id"]))
        return TaskResult(
            created_at=_timestamp(row["created_at"]),
            context=_text(row["context"]),
            status=TaskStatus(_text(row["status"]).strip().upper()),
        )
    except (TypeError, ValueError) as error:
        raise RowError(
            f"result {row.get('id')} of task {row.get('task_record_id')}: {error}"
        ) from (error)


def _field(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _BOOL_FIELDS:
        # MySQL's BOOLEAN is TINYINT: 0 and 1 arrive as ints. Anything else is not a flag.
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise RowError(f"{name} is {value!r}, not a flag")
    if name in _INT_FIELDS:
        if (
            isinstance(value, (int, Decimal))
            and not isinstance(value, bool)
            and value == int(value)
        ):
            return int(value)
        raise RowError(f"{name} is {value!r}, not a whole number")
    if name in _TIME_FIELDS:
        return _timestamp(value)
    return _text(value)


def _text(value: Any) -> str:
    # Ids kept as numbers become their text; bytes from a binary collation are decoded (a
    # UnicodeDecodeError is a ValueError: the row is rejected). NULL is not text.
    if value is None:
        raise ValueError("a required text is NULL")
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value if isinstance(value, str) else str(value)


def key_of(value: Any) -> str:
    """A task or scene id column as the API's id; ``ValueError`` if it can be none."""
    id = _text(value)
    validate_id(id)
    return id


def _timestamp(value: Any) -> str:
    """A timestamp column as the API writes it; naive values are UTC (as the SDK takes them)."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return format_timestamp(datetime.combine(value, time()))
    text_value = _text(value)
    try:
        return format_timestamp(datetime.fromisoformat(text_value.replace("Z", "+00:00")))
    except ValueError:
        return text_value  # a site's own format: passed on as it is


def step_back(cursor: Any, seconds: float) -> Any:
    """``cursor`` moved ``seconds`` into the past, in the cursor's own type.

    A timestamp cursor is looked back over, since a transaction commits after the moment it
    stamped its rows; a version number cursor is not (the full scans cover it).
    """
    if isinstance(cursor, datetime):
        return cursor - timedelta(seconds=seconds)
    if isinstance(cursor, str):
        try:
            moment = datetime.fromisoformat(cursor.replace("Z", "+00:00"))
        except ValueError:
            return cursor
        # The same text shape as the column's, so that text comparison stays time order.
        shifted = moment - timedelta(seconds=seconds)
        separator = "T" if "T" in cursor else " "
        return shifted.isoformat(sep=separator, timespec="milliseconds").replace("+00:00", "Z")
    return cursor

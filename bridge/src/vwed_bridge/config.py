"""What the bridge reads, and how: the settings, and the TOML file that maps a site's schema.

The default configuration reads the reference schema (``schema.sql``) as it is. A site whose
tables or columns are named otherwise maps them::

    [locations]
    table = "wms_location"            # or: query = "SELECT ... FROM ... JOIN ..."
    changed_at = "modify_time"        # the column every write changes (default updated_at)
    [locations.columns]               # API field = column, for the names that differ
    is_occupied = "occupied_flag"
    scene_id = "warehouse_code"

    [tasks]
    table = "task_log"
    [tasks.columns]
    id = "log_id"                     # auto-increment: the order of a task's results
    task_record_id = "task_id"
    context = "message"

A ``query`` is any SELECT whose result has the columns named as the table's would be; the bridge
wraps it as a derived table, so its filters, joins and renames are the site's own.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vwed_publisher import StorageLocation

LOCATION_FIELDS = tuple(f.name for f in dataclasses.fields(StorageLocation))
"""The 27 fields of a storage location, in the order panels receive them."""

RESULT_FIELDS = ("id", "task_record_id", "created_at", "context", "status")
"""The columns of a task result row: its id (the order), its task, and the API's three fields."""


class ConfigError(ValueError):
    """The configuration file or a flag says something the bridge cannot do."""


@dataclass(frozen=True)
class LocationSource:
    """Where the storage locations are, and which column tells that a row changed."""

    table: str = "vwed_storage_location"
    """The table (ignored when ``query`` is given)."""
    query: str | None = None
    """A SELECT that yields the locations, wrapped by the bridge as a derived table."""
    changed_at: str = "updated_at"
    """A column that every write of a row changes: a timestamp the database sets (ON UPDATE,
    or a trigger), or a version number. The bridge's cursor."""
    columns: dict[str, str] = field(default_factory=dict)
    """API field name to column name, for the fields whose column is named otherwise."""

    def column(self, name: str) -> str:
        """The column that holds the API field (or the cursor) ``name``."""
        return self.columns.get(name, name)


@dataclass(frozen=True)
class TaskSource:
    """Where the task results are: an append-only table ordered by an auto-increment id."""

    table: str = "vwed_task_result"
    """The table (ignored when ``query`` is given)."""
    query: str | None = None
    """A SELECT that yields the result rows, wrapped by the bridge as a derived table."""
    columns: dict[str, str] = field(default_factory=dict)
    """Field name (see :data:`RESULT_FIELDS`) to column name, for those named otherwise."""

    def column(self, name: str) -> str:
        """The column that holds ``name``."""
        return self.columns.get(name, name)


@dataclass(frozen=True)
class Sources:
    """Both sources; either may be switched off for a site that has only one of them."""

    locations: LocationSource | None = field(default_factory=LocationSource)
    """The storage locations, or ``None`` to publish no scenes."""
    tasks: TaskSource | None = field(default_factory=TaskSource)
    """The task results, or ``None`` to publish no tasks."""


def load_sources(path: Path | None) -> Sources:
    """The sources a TOML file describes; the reference schema's without a file."""
    if path is None:
        return Sources()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read the configuration {path}: {error}") from error
    unknown = set(document) - {"locations", "tasks"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}; known: locations, tasks")
    return Sources(
        locations=_section(document, "locations", LocationSource, (*LOCATION_FIELDS,)),
        tasks=_section(document, "tasks", TaskSource, RESULT_FIELDS),
    )


def _section(document: dict[str, Any], name: str, kind: type[Any], fields: tuple[str, ...]) -> Any:
    raw = document.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    if raw.get("enabled", True) is False:
        return None
    known = {f.name for f in dataclasses.fields(kind)} | {"enabled"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"[{name}]: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    columns = raw.get("columns", {})
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in columns.items()
    ):
        raise ConfigError(f"[{name}.columns] maps field names to column names (strings)")
    allowed = set(fields) | ({"changed_at"} if kind is LocationSource else set())
    strange = set(columns) - allowed
    if strange:
        raise ConfigError(f"[{name}.columns]: {sorted(strange)} are not fields of {name}")
    for key in ("table", "query", "changed_at"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            raise ConfigError(f"[{name}] {key} must be a non-empty string")
    values = {k: v for k, v in raw.items() if k != "enabled"}
    return kind(**values)

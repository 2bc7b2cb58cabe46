"""The cursors kept across restarts, in a small JSON file written atomically.

With it, a restarted bridge publishes what was written while it was away (broadcast panels see
those results and changes); without it, it tips instead, and panels still end at the
database's state, but broadcast panels do not see the changes they missed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_VERSION = 1
"""The file's format; a file of another version is ignored (and the bridge tips)."""


@dataclass(frozen=True)
class SavedState:
    """Where the bridge was in each table."""

    location_cursor: Any = None
    """The highest location cursor value published (a datetime, a string or a number)."""
    task_cursor: int | None = None
    """The highest result id read."""
    task_gaps: list[int] = field(default_factory=list)
    """Result ids below the cursor not committed yet when the state was written."""


def load_state(path: Path | None) -> SavedState:
    """The state in ``path``; an empty state when there is none or it cannot be read."""
    if path is None or not path.exists():
        return SavedState()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("version") != _VERSION:
            return SavedState()
        return SavedState(
            location_cursor=_decode(document.get("location_cursor")),
            task_cursor=document.get("task_cursor"),
            task_gaps=[int(gap) for gap in document.get("task_gaps", [])],
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return SavedState()


def save_state(path: Path, state: SavedState) -> None:
    """Write ``state`` to ``path`` so that a crash leaves the old file or the new one whole."""
    document = {
        "version": _VERSION,
        "location_cursor": _encode(state.location_cursor),
        "task_cursor": state.task_cursor,
        "task_gaps": state.task_gaps,
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(value["datetime"])
    return value

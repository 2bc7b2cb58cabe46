"""``prev_rev`` without NATS: what RecentKeys remembers for it, and which values are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vwed_publisher import (
    LocationsRemove,
    LocationStatus,
    LocationsUpsert,
    SceneEvent,
    StatusChange,
    TaskAppend,
    TaskEvent,
    TaskReplace,
)
from vwed_publisher.tips import RecentKeys
from vwed_publisher.wire import MAX_REV, chained_event_json


def test_last_rev_is_the_highest_rev_published_on_the_subject() -> None:
    recent = RecentKeys(5.0, 60.0)
    assert recent.last_rev("vwed.task.t-1.execution") is None
    recent.published("vwed.task.t-1.execution", True, "t-1", 16, 0.0)
    assert recent.last_rev("vwed.task.t-1.execution") == 16
    recent.published("vwed.task.t-1.execution", True, "t-1", 17, 1.0)
    assert recent.last_rev("vwed.task.t-1.execution") == 17
    # A rev published out of order does not lower it: the hub dropped that event.
    recent.published("vwed.task.t-1.execution", True, "t-1", 3, 2.0)
    assert recent.last_rev("vwed.task.t-1.execution") == 17
    # Each key has its own, and a scene with the same id is another key.
    assert recent.last_rev("vwed.task.t-2.execution") is None
    assert recent.last_rev("vwed.scene.t-1.storage") is None
    recent.published("vwed.scene.t-1.storage", False, "t-1", 5, 2.0)
    assert recent.last_rev("vwed.scene.t-1.storage") == 5
    assert recent.last_rev("vwed.task.t-1.execution") == 17


def test_last_rev_is_forgotten_with_the_key_after_its_window() -> None:
    recent = RecentKeys(5.0, 60.0)
    recent.published("vwed.task.t-1.execution", True, "t-1", 16, 0.0)
    recent.published("vwed.task.t-2.execution", True, "t-2", 20, 30.0)
    recent.due(61.0 + 5.0)  # by then each key's turn has come at least once
    assert recent.last_rev("vwed.task.t-1.execution") is None
    assert recent.last_rev("vwed.task.t-2.execution") == 20
    recent.published("vwed.task.t-1.execution", True, "t-1", 40, 67.0)
    assert recent.last_rev("vwed.task.t-1.execution") == 40


def status() -> LocationStatus:
    return LocationStatus(
        id="L-1", is_occupied=True, is_locked=False, is_disabled=False, is_empty_tray=False
    )


EVENTS: dict[str, Callable[..., TaskEvent | SceneEvent]] = {
    "append": lambda rev, **kw: TaskAppend("t-1", rev, 0, [], **kw),
    "replace": lambda rev, **kw: TaskReplace("t-1", rev, [], **kw),
    "status_change": lambda rev, **kw: StatusChange(
        "s-1", rev, "A-1", "OCCUPY", status(), "2025-06-11T12:00:00.000Z", **kw
    ),
    "upsert": lambda rev, **kw: LocationsUpsert("s-1", rev, [], **kw),
    "remove": lambda rev, **kw: LocationsRemove("s-1", rev, ["L-1"], **kw),
}


@pytest.mark.parametrize("make", EVENTS.values(), ids=EVENTS.keys())
@pytest.mark.parametrize(
    ("rev", "prev_rev", "error", "message"),
    [
        (17, 17, ValueError, r"prev_rev must be below rev \(17\), not 17"),
        (17, 18, ValueError, r"prev_rev must be below rev \(17\), not 18"),
        (17, -1, ValueError, "prev_rev must be an unsigned 64-bit integer, not -1"),
        (MAX_REV, MAX_REV + 1, ValueError, "prev_rev must be an unsigned 64-bit integer"),
        (17, "16", TypeError, "prev_rev must be int or None, not str"),
        (17, 16.0, TypeError, "prev_rev must be int or None, not float"),
        (17, True, TypeError, "prev_rev must be int or None, not bool"),
        (-1, 0, ValueError, "rev must be an unsigned 64-bit integer, not -1"),
    ],
)
def test_a_bad_prev_rev_is_refused_when_built_and_when_sent(
    make: Callable[..., TaskEvent | SceneEvent],
    rev: int,
    prev_rev: Any,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        make(rev, prev_rev=prev_rev)
    # Events are mutable: one changed after it was built is checked again before it is sent.
    event = make(rev if rev >= 0 else 1)
    event.rev = rev
    event.prev_rev = prev_rev
    with pytest.raises(error, match=message):
        event._check()


@pytest.mark.parametrize("make", EVENTS.values(), ids=EVENTS.keys())
def test_good_prev_revs_pass_and_are_written_after_rev(
    make: Callable[..., TaskEvent | SceneEvent],
) -> None:
    for rev, prev_rev in [(1, 0), (17, 16), (17, 3), (MAX_REV, MAX_REV - 1), (MAX_REV, 0)]:
        event = make(rev, prev_rev=prev_rev)
        event._check()
        assert f'"rev":{rev},"prev_rev":{prev_rev},'.encode() in chained_event_json(event, None)
    unchained = make(17)
    unchained._check()
    assert unchained.prev_rev is None
    assert b'"prev_rev"' not in chained_event_json(unchained, None)


def test_prev_rev_is_keyword_only() -> None:
    # Positional arguments mean what they meant before prev_rev was added.
    with pytest.raises(TypeError, match="positional"):
        TaskAppend("t-1", 17, 0, [], 16)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        StatusChange("s-1", 9, "A-1", "OCCUPY", status(), "now", 8)  # type: ignore[call-arg]

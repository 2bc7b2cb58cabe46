"""The bridge's logic without I/O: what a poll's rows call for, and what a failed publish keeps."""

from __future__ import annotations

from typing import Any

from vwed_publisher import StatusAction, StorageLocation, TaskResult, TaskStatus

from vwed_bridge.changes import (
    Appended,
    LocationMirror,
    Removed,
    Reordered,
    ResultRow,
    Seen,
    StatusChanged,
    TaskCursor,
    Upserted,
    chunks_by_size,
)


def loc(id: str, scene: str = "s-1", changed_at: Any = 1, **fields: Any) -> Seen:
    location = StorageLocation(
        id=id,
        layer_index=1,
        layer_name=f"{id}-layer",
        station_name="ST1",
        scene_id=scene,
        storage_area_id="A",
        **fields,
    )
    return Seen(location, changed_at)


def test_status_fields_alone_make_a_status_change_and_other_fields_an_upsert() -> None:
    mirror = LocationMirror()
    mirror.load([loc("L-1"), loc("L-2"), loc("L-3", scene="s-2")])
    assert mirror.cursor == 1
    changes = mirror.plan(
        [
            loc("L-1", changed_at=2, is_locked=True, locked_by="t-1", updated_at="X"),
            loc("L-2", changed_at=3, max_weight=10),
            loc("L-9", changed_at=4),
            loc("L-3", scene="s-2", changed_at=1),  # read again by the look-back: nothing
        ],
        now="NOW",
    )
    assert len(changes) == 2
    status, upsert = changes
    assert isinstance(status, StatusChanged)
    assert (status.scene_id, status.action, status.timestamp) == ("s-1", StatusAction.LOCK, "X")
    assert status.status.locked_by == "t-1"
    assert isinstance(upsert, Upserted)
    assert [s.location.id for s in upsert.seen] == ["L-2", "L-9"]


def test_a_row_written_back_to_its_old_values_still_changed() -> None:
    # Between two polls a row went to B and back to A; a snapshot may have shown B. Its cursor
    # moved, so it is published again (as an UPDATE of the same values).
    mirror = LocationMirror()
    mirror.load([loc("L-1", changed_at=1)])
    (change,) = mirror.plan([loc("L-1", changed_at=5)], now="NOW")
    assert isinstance(change, StatusChanged)
    assert change.action is StatusAction.UPDATE
    assert change.timestamp == "NOW"


def test_only_a_complete_read_removes_and_only_what_was_published_is_kept() -> None:
    mirror = LocationMirror()
    mirror.load([loc("L-1"), loc("L-2"), loc("L-3", scene="s-2")])
    assert mirror.plan([loc("L-1")], now="NOW") == []
    changes = mirror.plan([loc("L-1")], now="NOW", complete=True)
    assert changes == [Removed("s-1", ["L-2"]), Removed("s-2", ["L-3"])]
    # Only the first removal went out (the publish of the second failed): the next full scan
    # plans the second again, and nothing else.
    mirror.published(changes[0])
    assert mirror.plan([loc("L-1")], now="NOW", complete=True) == [Removed("s-2", ["L-3"])]
    assert mirror.scenes() == {"s-1", "s-2"}


def test_an_unpublished_change_is_planned_again() -> None:
    mirror = LocationMirror()
    mirror.load([loc("L-1")])
    row = loc("L-1", changed_at=2, is_occupied=True)
    (change,) = mirror.plan([row], now="NOW")
    assert mirror.cursor == 1  # not published yet
    (again,) = mirror.plan([row], now="NOW")
    assert again == change
    mirror.published(change)
    assert mirror.cursor == 2
    assert mirror.plan([row], now="NOW") == []


def result(context: str) -> TaskResult:
    return TaskResult("2025-06-11T12:00:00.000Z", context, TaskStatus.RUNNING)


def row(id: int, task: str, position: int, context: str | None = None) -> ResultRow:
    return ResultRow(id, task, position, result(context or f"r{id}"))


def test_rows_become_one_append_per_task_at_the_position_the_database_counted() -> None:
    cursor = TaskCursor(10)
    plan = cursor.plan([row(11, "a", 3), row(12, "b", 0), row(13, "a", 4)], now=100.0)
    assert plan.changes == [
        Appended("a", 3, [result("r11"), result("r13")]),
        Appended("b", 0, [result("r12")]),
    ]
    assert plan.cursor == 13
    assert cursor.cursor == 10  # nothing kept until commit
    cursor.commit(plan)
    assert cursor.cursor == 13
    assert cursor.open_gaps(100.0) == []


def test_a_late_commit_fills_its_gap_and_reorders_its_task() -> None:
    cursor = TaskCursor(10, gap_ttl=60)
    # Id 11 was taken by a transaction that has not committed yet.
    cursor.commit(cursor.plan([row(12, "a", 5)], now=100.0))
    assert cursor.open_gaps(101.0) == [11]
    # It commits: its result belongs before 12 in task a's list, which hubs already hold.
    plan = cursor.plan([row(11, "a", 5), row(14, "c", 0)], now=102.0)
    assert plan.changes == [
        Appended("a", 5, [result("r11")]),
        Appended("c", 0, [result("r14")]),
        Reordered("a"),
    ]
    cursor.commit(plan)
    assert cursor.open_gaps(103.0) == [13]
    # A gap that never fills is given up after gap_ttl.
    assert cursor.open_gaps(102.0 + 61) == []


def test_a_skipped_row_advances_the_cursor_without_an_event() -> None:
    cursor = TaskCursor(0)
    plan = cursor.plan([ResultRow(1, "a", 0, None), row(2, "a", 0)], now=1.0)
    assert plan.changes == [Appended("a", 0, [result("r2")])]
    assert plan.cursor == 2


def test_a_huge_jump_of_ids_keeps_a_bounded_number_of_gaps() -> None:
    cursor = TaskCursor(0)
    cursor.commit(cursor.plan([row(5_000_000, "a", 0)], now=1.0))
    assert len(cursor.gaps) == TaskCursor.MAX_GAPS
    assert min(cursor.gaps) == 5_000_000 - TaskCursor.MAX_GAPS


def test_a_gap_filled_after_a_restart_still_reorders_its_task() -> None:
    # The state file kept the cursor and the gap, but nothing of which task had which ids.
    cursor = TaskCursor(12, [11])
    assert cursor.open_gaps(5.0) == [11]
    plan = cursor.plan([row(11, "a", 0)], now=6.0)
    assert plan.changes == [Appended("a", 0, [result("r11")]), Reordered("a")]


def test_a_row_stamped_in_the_future_does_not_carry_the_cursor_past_the_clock() -> None:
    mirror = LocationMirror()
    mirror.load([loc("L-1", changed_at=10)])
    mirror.ceiling = 20
    (change,) = mirror.plan([loc("L-1", changed_at=2099, is_occupied=True)], now="NOW")
    mirror.published(change)
    assert mirror.cursor == 20


def test_a_cursor_value_of_another_type_is_published_but_moves_nothing() -> None:
    mirror = LocationMirror()
    mirror.load([loc("L-1", changed_at=10)])
    (change,) = mirror.plan([loc("L-1", changed_at="0000-00-00", is_occupied=True)], now="NOW")
    mirror.published(change)
    assert mirror.cursor == 10
    assert mirror.scene("s-1")[0].is_occupied


def test_records_are_split_by_size_and_one_too_large_is_left_out() -> None:
    assert chunks_by_size([], 10) == ([], [])
    assert chunks_by_size([4, 4, 4], 10) == ([(0, 2), (2, 3)], [])
    assert chunks_by_size([4, 11, 4, 4, 4], 10) == ([(0, 1), (2, 4), (4, 5)], [1])
    assert chunks_by_size([11], 10) == ([], [0])
    assert chunks_by_size([10, 10], 10) == ([(0, 1), (1, 2)], [])

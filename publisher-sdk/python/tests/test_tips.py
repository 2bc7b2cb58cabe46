"""When each key is tipped, without NATS: RecentKeys is driven with a clock of the test's own."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict

import pytest

from vwed_publisher.tips import RecentKeys

INTERVAL = 5.0
STEP = INTERVAL / 10
"""The rounds of these tests: each tenth of the interval (the publisher's are every 0.1 s)."""


def task(n: int) -> str:
    return f"vwed.task.t-{n}.execution"


def publish_many(recent: RecentKeys, count: int, now: float) -> list[str]:
    subjects = [task(n) for n in range(count)]
    for n, subject in enumerate(subjects):
        recent.published(subject, True, f"t-{n}", 100 + n, now)
    return subjects


def rounds(recent: RecentKeys, start: float, end: float) -> dict[float, list[str]]:
    """The subjects tipped by ``due`` at each round after ``start``, up to ``end``."""
    tipped = {}
    k = 1
    while start + k * STEP <= end + 1e-9:
        now = start + k * STEP
        tipped[now] = [subject for subject, _ in recent.due(now)]
        k += 1
    return tipped


def test_keys_published_together_are_tipped_spread_over_the_interval() -> None:
    recent = RecentKeys(INTERVAL, 60.0)
    subjects = publish_many(recent, 1000, 0.0)
    tipped = rounds(recent, 0.0, 3 * INTERVAL)

    # Each tenth of the interval about a tenth of the keys, not all of them at once.
    for now, subjects_due in tipped.items():
        assert 60 <= len(subjects_due) <= 140, (now, len(subjects_due))
        assert len(set(subjects_due)) == len(subjects_due)
    # Every key once per interval, exactly one interval apart: never twice within one.
    times: defaultdict[str, list[float]] = defaultdict(list)
    for now, subjects_due in tipped.items():
        for subject in subjects_due:
            times[subject].append(now)
    assert set(times) == set(subjects)
    for subject, at in times.items():
        assert len(at) == 3, subject
        assert at[0] <= INTERVAL
        assert [b - a for a, b in itertools.pairwise(at)] == pytest.approx([INTERVAL, INTERVAL])
    # And each interval the same keys at the same tenth of it: the spread lasts.
    first = [sorted(tipped[k * STEP]) for k in range(1, 11)]
    second = [sorted(tipped[INTERVAL + k * STEP]) for k in range(1, 11)]
    assert first == second


def test_a_tip_names_the_keys_highest_rev_in_the_keys_shape() -> None:
    recent = RecentKeys(INTERVAL, 60.0)
    recent.published("vwed.task.t-1.execution", True, "t-1", 16, 0.0)
    recent.published("vwed.task.t-1.execution", True, "t-1", 17, 0.5)
    recent.published("vwed.task.t-1.execution", True, "t-1", 3, 1.0)  # out of order: dropped
    recent.published("vwed.scene.s-1.storage", False, "s-1", 11, 0.0)
    tips = {subject: json.loads(payload) for subject, payload in recent.due(INTERVAL)}
    assert tips == {
        "vwed.task.t-1.execution": {"task_record_id": "t-1", "rev": 17, "op": "tip"},
        "vwed.scene.s-1.storage": {"scene_id": "s-1", "rev": 11, "kind": "tip"},
    }
    assert {s: json.loads(p) for s, p in recent.every(INTERVAL)} == tips


def test_publishing_a_key_again_does_not_move_its_tips() -> None:
    first = RecentKeys(INTERVAL, 60.0)
    first.published(task(1), True, "t-1", 1, 0.0)
    [at] = [now for now, due in rounds(first, 0.0, INTERVAL).items() if due]

    again = RecentKeys(INTERVAL, 60.0)
    again.published(task(1), True, "t-1", 1, 0.0)
    tipped = []
    for now, due in rounds(again, 0.0, 2 * INTERVAL).items():
        again.published(task(1), True, "t-1", int(now * 10) + 2, now)  # an event every round
        tipped += [now] * len(due)
    assert tipped == pytest.approx([at, at + INTERVAL])


def test_a_key_is_forgotten_one_window_after_its_last_event() -> None:
    recent = RecentKeys(INTERVAL, 12.0)
    subjects = publish_many(recent, 1000, 0.0)
    recent.published(task(0), True, "t-0", 500, 8.0)  # the key's last event is later
    tipped = rounds(recent, 0.0, 30.0)

    # A key is tipped while its last event is at most a window old, and never after.
    for now, subjects_due in tipped.items():
        for subject in subjects_due:
            assert now <= (20.0 if subject == task(0) else 12.0), (now, subject)
    counts = Counter(subject for due in tipped.values() for subject in due)
    assert set(counts) == set(subjects)
    assert counts[task(0)] == 4  # by 20.0: at its phase, then 3 more intervals
    # Forgotten at its first turn past the window, and so within an interval of it.
    assert len(recent) == 0
    assert recent.last_rev(task(0)) is None
    assert recent.due(100.0) == []
    assert recent.every(100.0) == []

    # Published again, it is tipped again: at its phase, as the first time.
    recent.published(task(0), True, "t-0", 600, 40.0)
    assert [now for now, due in rounds(recent, 40.0, 40.0 + INTERVAL).items() if due] == [
        now + 40.0 for now, due in tipped.items() if task(0) in due
    ][:1]


def test_len_goes_to_zero_within_an_interval_after_the_window() -> None:
    recent = RecentKeys(INTERVAL, 60.0)
    publish_many(recent, 1000, 0.0)
    sizes = []
    for k in range(1, int((60.0 + INTERVAL) / STEP) + 1):
        recent.due(k * STEP)
        sizes.append((k * STEP, len(recent)))
    assert dict(sizes)[60.0] == 1000
    assert dict(sizes)[60.0 + INTERVAL] == 0
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(sizes))


def test_after_a_reconnect_every_remembered_key_is_tipped_at_once() -> None:
    recent = RecentKeys(INTERVAL, 60.0)
    old = publish_many(recent, 10, 0.0)
    young = [task(n) for n in range(10, 20)]
    for n, subject in enumerate(young, 10):
        recent.published(subject, True, f"t-{n}", n, 30.0)
    tips = recent.every(30.0)
    assert sorted(subject for subject, _ in tips) == sorted(old + young)
    assert len({subject for subject, _ in tips}) == len(tips)

    # Connected until 62.0, back at 70.0: no rounds in between.
    tipped = rounds(recent, 0.0, 62.0)
    # Some old keys are past the window but not forgotten yet: their turn has not come since.
    assert len(recent) > len(young)
    # The window is counted up to the horizon (when the connection was lost), not now: the
    # keys past it then are forgotten, and never tipped again.
    tips = recent.every(62.0)
    assert sorted(subject for subject, _ in tips) == sorted(young)
    assert len(recent) == len(young)
    assert all(recent.last_rev(subject) is None for subject in old)
    after = rounds(recent, 70.0, 80.0)
    assert not [s for due in after.values() for s in due if s in old]
    # The others' tip times stay as they were: each key at the same point of the interval.
    assert [sorted(after[75.0 + k * STEP]) for k in range(1, 11)] == [
        sorted(s for s in tipped[55.0 + k * STEP] if s in young) for k in range(1, 11)
    ]

    # A forgotten key published again is tipped once an interval, as any other.
    recent.published(old[0], True, "t-0", 1000, 80.0)
    tipped = rounds(recent, 80.0, 80.0 + 3 * INTERVAL)
    assert Counter(s for due in tipped.values() for s in due if s == old[0]) == {old[0]: 3}


def test_a_round_long_overdue_tips_each_key_once_and_the_spread_survives() -> None:
    recent = RecentKeys(INTERVAL, 3600.0)
    subjects = publish_many(recent, 1000, 0.0)
    before = rounds(recent, 0.0, INTERVAL)

    # The loop stalled for a hundred intervals: each key once, not once per interval missed.
    late = [subject for subject, _ in recent.due(500.0)]
    assert sorted(late) == sorted(subjects)
    assert recent.due(500.0) == []
    # Then each key is tipped at its own point of the interval again, not all together.
    after = rounds(recent, 500.0, 500.0 + INTERVAL)
    assert [sorted(due) for due in after.values()] == [sorted(due) for due in before.values()]


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RecentKeys(0.0, 60.0)

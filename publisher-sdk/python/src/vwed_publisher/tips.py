"""Which keys to tip, and when (SPEC section 3, "Tips").

Core NATS delivers at most once, so an event can be lost on its way to a hub without anyone
noticing. A tip names a key's latest rev; a hub that holds less takes a fresh snapshot. This
module is the bookkeeping alone, with no I/O and no clock of its own, so it is tested directly;
the publisher feeds it what it published and the time, and sends what it returns.

Each key is tipped once every interval, but not all keys at the same moment: a key's tips are
due at its own phase of the interval, taken from a hash of its subject, so that the keys are
spread evenly over it however many were published together. A hub that takes the tips of
10,000 keys in one burst delays the events behind them (measured: event latency p99 from 6.6 ms
to 11-15 ms, max from 22 ms to over 80 ms); spread over the interval they cost it nothing
noticeable. Only after a NATS reconnect is every key tipped at once (:meth:`RecentKeys.every`):
what was in flight when the connection broke may be lost, and the sooner it heals the better.

It also chains events: a tip heals a key that lost its *last* event, but an event lost between
two that arrive leaves the hub at the latest rev, with nothing to tip. Each event therefore
names, as ``prev_rev``, the rev published for its key just before it (:meth:`RecentKeys.last_rev`),
and a hub that holds less knows it missed one.
"""

from __future__ import annotations

import heapq
import math
import zlib
from dataclasses import dataclass

from .wire import scene_tip_json, task_tip_json


@dataclass
class _Recent:
    """One key published recently."""

    is_task: bool
    """Whether the key is a task record (else a scene): the tip's shape depends on it."""
    id: str
    """The task record id or scene id, written into the tip."""
    rev: int
    """The highest rev published for the key: what the tip announces."""
    published_at: float
    """When the key was last published (monotonic seconds): tips stop one window later."""

    def tip(self) -> bytes:
        """The tip announcing :attr:`rev`."""
        return (
            task_tip_json(self.id, self.rev) if self.is_task else scene_tip_json(self.id, self.rev)
        )


class RecentKeys:
    """The keys published in the last ``window`` seconds, with the highest rev of each.

    Each is tipped once every ``interval`` seconds, at its own phase of the interval.
    """

    __slots__ = ("_due", "_keys", "interval", "window")

    def __init__(self, interval: float, window: float) -> None:
        """Tip each key every ``interval`` seconds until ``window`` seconds after its last event."""
        if not interval > 0:
            raise ValueError(f"the tip interval must be positive, not {interval!r}")
        self.interval = interval
        """Seconds between two tips of a key."""
        self.window = window
        """How long after its last event a key is still tipped."""
        self._keys: dict[str, _Recent] = {}
        """By event subject, which is unique per key and is where the tip goes."""
        self._due: list[tuple[float, str]] = []
        """A heap of (next tip time, subject), exactly one entry per key of :attr:`_keys`: a
        round looks at the keys due only, however many are remembered."""

    def __len__(self) -> int:
        return len(self._keys)

    def published(self, subject: str, is_task: bool, id: str, rev: int, now: float) -> None:
        """Note that an event with ``rev`` went out on ``subject`` at ``now``.

        A key not remembered yet is first tipped at its phase of the interval after ``now``;
        publishing a remembered key again leaves its tip times as they are.
        """
        recent = self._keys.get(subject)
        if recent is None:
            self._keys[subject] = _Recent(is_task, id, rev, now)
            heapq.heappush(self._due, (now + self._phase(subject), subject))
        else:
            recent.rev = max(recent.rev, rev)
            recent.published_at = now

    def last_rev(self, subject: str) -> int | None:
        """The highest rev published on ``subject`` while it is remembered, else ``None``.

        Published in rev order, as the publisher does, that is the rev of the event (or tip)
        just before the next one: what the next event names as ``prev_rev``. A key forgotten
        after its window has none, and its next event starts a new chain.
        """
        recent = self._keys.get(subject)
        return None if recent is None else recent.rev

    def due(self, now: float) -> list[tuple[str, bytes]]:
        """The tips due at ``now``, as (subject, payload); forgets the due keys past the window.

        Each key is returned at most once a call, and then not again for about an interval:
        after a call that came late (a stalled event loop) a key's next tip is its first
        phase slot after ``now``, so the keys stay spread over the interval.
        """
        horizon = now - self.window
        interval = self.interval
        tips = []
        while self._due and self._due[0][0] <= now:
            next_tip, subject = heapq.heappop(self._due)
            recent = self._keys[subject]
            if recent.published_at < horizon:
                del self._keys[subject]
                continue
            tips.append((subject, recent.tip()))
            next_tip += interval
            if next_tip <= now:
                # Late by more than an interval: skip the slots missed, keeping the phase.
                next_tip += (math.floor((now - next_tip) / interval) + 1) * interval
                if next_tip <= now:  # rounding
                    next_tip = now + interval
            heapq.heappush(self._due, (next_tip, subject))
        return tips

    def every(self, horizon: float) -> list[tuple[str, bytes]]:
        """A tip for every remembered key, as (subject, payload): for after a NATS reconnect.

        Forgets first the keys last published more than a window before ``horizon`` (when the
        connection was lost). The keys' tip times stay as they are.
        """
        oldest = horizon - self.window
        expired = [s for s, r in self._keys.items() if r.published_at < oldest]
        if expired:
            for subject in expired:
                del self._keys[subject]
            self._due = [entry for entry in self._due if entry[1] in self._keys]
            heapq.heapify(self._due)
        return [(subject, recent.tip()) for subject, recent in self._keys.items()]

    def _phase(self, subject: str) -> float:
        """Where in the interval the key's tips fall, in ``[0, interval)``.

        The same for a subject every time, and spread evenly across subjects.
        """
        return zlib.crc32(subject.encode()) / 2**32 * self.interval

"""Default ``rev`` generation: a hybrid clock."""

from __future__ import annotations

import threading
import time

_MAX_REV = 2**64 - 1


class HybridClock:
    """Issues strictly increasing revs that also keep increasing across process restarts.

    Each rev is the wall clock in microseconds since the Unix epoch, or the previous rev plus one
    when the clock has not moved past it (or went back). A restarted publisher therefore starts
    above every rev it issued before, as long as it issued fewer than a million revs per second
    ahead of the clock and the clock was not set back across the restart. Services that keep a
    version in their database should publish that instead.

    Safe to share between threads and coroutines.
    """

    __slots__ = ("_last", "_lock")

    def __init__(self) -> None:
        """A clock that has issued nothing yet."""
        self._last = 0
        """The last rev handed out; no rev is ever handed out twice."""
        self._lock = threading.Lock()
        """Makes read-and-bump one step for callers on several threads."""

    def next(self) -> int:
        """The next rev: greater than every rev this clock returned or observed before."""
        return self.next_at(time.time_ns() // 1000)

    def next_at(self, now_micros: int) -> int:
        """The next rev if the wall clock reads ``now_micros`` (microseconds since the epoch)."""
        with self._lock:
            rev = max(now_micros, min(self._last + 1, _MAX_REV))
            self._last = rev
            return rev

    def observe(self, rev: int) -> None:
        """Make every later rev greater than ``rev``.

        For example the highest rev a service finds in its store at start-up.
        """
        with self._lock:
            self._last = max(self._last, rev)

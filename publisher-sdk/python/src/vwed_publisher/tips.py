"""Which keys to tip, and when (SPEC section 3, "Tips").

Core NATS delivers at most once, so an event can be lost on its way to a hub without anyone
noticing. A tip names a key's latest rev; a hub that holds less takes a fresh snapshot. This
module is the bookkeeping alone, with no I/O and no clock of its own, so it is tested directly;
the publisher feeds it what it published and sends what it returns.

It also chains events: a tip heals a key that lost its *last* event, but an event lost between
two that arrive leaves the hub at the latest rev, with nothing to tip. Each event therefore
names, as ``prev_rev``, the rev published for its key just before it (:meth:`RecentKeys.last_rev`),
and a hub that holds less knows it missed one.
"""

from __future__ import annotations

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


class RecentKeys:
    """The keys published in the last ``window`` seconds, with the highest rev of each."""

    __slots__ = ("_keys", "window")

    def __init__(self, window: float) -> None:
        """Remember keys for ``window`` seconds after their last event."""
        self.window = window
        """How long after its last event a key is still tipped."""
        self._keys: dict[str, _Recent] = {}
        """By event subject, which is unique per key and is where the tip goes."""

    def __len__(self) -> int:
        return len(self._keys)

    def published(self, subject: str, is_task: bool, id: str, rev: int, now: float) -> None:
        """Note that an event with ``rev`` went out on ``subject`` at ``now``."""
        recent = self._keys.get(subject)
        if recent is None:
            self._keys[subject] = _Recent(is_task, id, rev, now)
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

    def tips(self, now: float) -> list[tuple[str, bytes]]:
        """The tips to send at ``now``, as (subject, payload); forgets keys past the window."""
        horizon = now - self.window
        expired = [s for s, r in self._keys.items() if r.published_at < horizon]
        for subject in expired:
            del self._keys[subject]
        return [
            (subject, task_tip_json(r.id, r.rev) if r.is_task else scene_tip_json(r.id, r.rev))
            for subject, r in self._keys.items()
        ]

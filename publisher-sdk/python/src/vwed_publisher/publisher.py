"""Publishing change events, tipping recent keys, and serving snapshots: the asyncio face."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client

from .responder import (
    SCENE_QUEUE_GROUP,
    TASK_QUEUE_GROUP,
    SceneSnapshotHandler,
    SnapshotResponder,
    TaskSnapshotHandler,
)
from .rev import HybridClock
from .subject import DEFAULT_PREFIX, Subjects
from .tips import RecentKeys
from .wire import (
    LocationsRemove,
    LocationStatus,
    LocationsUpsert,
    SceneEvent,
    SceneSnapshot,
    StatusAction,
    StatusChange,
    StorageLocation,
    TaskAppend,
    TaskEvent,
    TaskReplace,
    TaskResult,
    TaskSnapshot,
    timestamp_now,
    to_json,
)

log = logging.getLogger("vwed_publisher")

DEFAULT_TIP_INTERVAL = 5.0
"""Seconds between tips (SPEC section 3): the longest a lost event stays unhealed."""
DEFAULT_TIP_WINDOW = 60.0
"""Seconds after its last event that a key is still tipped (SPEC section 3)."""

_RECONNECT_POLL = 0.1
"""How often the tipper looks for a NATS reconnect, to tip every recent key at once after it.

nats-py takes its reconnect callback only at connect time, and the publisher is handed a
connection made by the service; its reconnect counter is public, so it is read instead."""


class Publisher:
    """Publishes task and scene change events to NATS on the contract's subjects.

    One publisher serves any number of coroutines: a key's events reach NATS in rev order
    however many publish at once. It also tips every key it published in the last
    ``tip_window`` seconds, every ``tip_interval`` seconds and at once after a NATS reconnect, so
    that a hub which lost an event heals within one tip interval.

    Example::

        nc = await nats.connect("nats://127.0.0.1:4222")
        pub = Publisher(nc, prefix="vwed")
        rev = await pub.append_task_results(
            "t-1", 0, [TaskResult.now("[取货] 开始", TaskStatus.RUNNING)]
        )
        await pub.close()
    """

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = DEFAULT_PREFIX,
        tip_interval: float | None = DEFAULT_TIP_INTERVAL,
        tip_window: float = DEFAULT_TIP_WINDOW,
        clock: HybridClock | None = None,
    ) -> None:
        """A publisher on the connected NATS client ``nc``.

        ``prefix`` must match the hub's ``--subject-prefix``. ``tip_interval=None`` turns tips
        off (only for tests and tools: without tips a lost event stays lost until the key
        changes again). ``clock`` lets several publishers of one process share a rev clock.
        """
        if tip_interval is not None and not tip_interval > 0:
            raise ValueError(f"tip_interval must be positive or None, not {tip_interval!r}")
        if not tip_window >= 0:
            raise ValueError(f"tip_window must not be negative, not {tip_window!r}")
        self._nc = nc
        """The connection events go out on; the service's own unless made by :meth:`connect`."""
        self._subjects = Subjects(prefix)
        """Maps ids to subjects exactly as the hub does, and refuses ids it could never serve."""
        self._clock = clock or HybridClock()
        """Issues the revs of the convenience methods."""
        self._in_rev_order = asyncio.Lock()
        """Held from taking a rev until its event is handed to the connection, so that
        concurrent callers publish each key's events in rev order (the hub drops an event whose
        rev is not above the last it saw). nats-py queues a message before it first yields, so
        the lock is almost never contended; it keeps the order whatever the client does."""
        self._tip_interval = tip_interval
        """Seconds between tips, or ``None`` for none."""
        self._recent = RecentKeys(tip_window)
        """The keys to tip, with their latest revs."""
        self._tipper: asyncio.Task[None] | None = None
        """The tip loop; started by the first publish, which runs on the service's loop."""
        self._responders: set[SnapshotResponder[Any]] = set()
        """Responders made by this publisher, stopped when it closes."""
        self._owns_connection = False
        """Whether :meth:`close` closes the connection too (it made it)."""
        self._closed = False
        """Set by :meth:`close`; publishing afterwards is a mistake and raises."""

    @classmethod
    async def connect(
        cls,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = DEFAULT_PREFIX,
        tip_interval: float | None = DEFAULT_TIP_INTERVAL,
        tip_window: float = DEFAULT_TIP_WINDOW,
        **connect_options: Any,
    ) -> Publisher:
        """Connect to NATS and return a publisher that owns the connection.

        ``connect_options`` go to :func:`nats.connect` (credentials, TLS, reconnect settings).
        :meth:`close` then closes the connection too. By default the client keeps trying to
        reconnect for ever: a service should not give up on its hub.
        """
        connect_options.setdefault("max_reconnect_attempts", -1)
        nc = await nats.connect(servers, **connect_options)
        publisher = cls(nc, prefix=prefix, tip_interval=tip_interval, tip_window=tip_window)
        publisher._owns_connection = True
        return publisher

    @property
    def nc(self) -> Client:
        """The NATS connection this publisher sends on."""
        return self._nc

    @property
    def subjects(self) -> Subjects:
        """The subjects this publisher uses."""
        return self._subjects

    @property
    def clock(self) -> HybridClock:
        """The clock behind :meth:`next_rev`, e.g. to observe the highest rev in a store."""
        return self._clock

    def next_rev(self) -> int:
        """The next rev of this publisher's hybrid clock.

        Take it while you write the state it versions (in the same transaction), then publish
        an event carrying it with :meth:`publish_task` or :meth:`publish_scene`.
        """
        return self._clock.next()

    # --- events with the caller's own revs -----------------------------------------------------

    async def publish_task(self, event: TaskEvent) -> None:
        """Publish a task event exactly as given, with the caller's own ``rev``.

        Publish each key's events in rev order: the hub drops an event whose rev is not above
        the last one it saw for that key.
        """
        if not isinstance(event, (TaskAppend, TaskReplace)):
            raise TypeError(f"a task event is TaskAppend or TaskReplace, not {type(event)}")
        subject = self._subjects.task_events(event.task_record_id)
        event._check()
        async with self._in_rev_order:
            await self._send(subject, True, event.task_record_id, event.rev, to_json(event))

    async def publish_scene(self, event: SceneEvent) -> None:
        """Publish a scene event exactly as given, with the caller's own ``rev``.

        Publish each key's events in rev order: the hub drops an event whose rev is not above
        the last one it saw for that key.
        """
        if not isinstance(event, (StatusChange, LocationsUpsert, LocationsRemove)):
            raise TypeError(
                "a scene event is StatusChange, LocationsUpsert or LocationsRemove, "
                f"not {type(event)}"
            )
        subject = self._subjects.scene_events(event.scene_id)
        event._check()
        async with self._in_rev_order:
            await self._send(subject, False, event.scene_id, event.rev, to_json(event))

    # --- events with the clock's revs ------------------------------------------------------------

    async def append_task_results(
        self, task_record_id: str, index: int, results: Iterable[TaskResult]
    ) -> int:
        """Publish ``results`` written at ``index`` of the task's list; return the event's rev."""
        event = TaskAppend(task_record_id, 0, index, list(results))
        return await self._publish_with_next_rev(event)

    async def replace_task_results(self, task_record_id: str, results: Iterable[TaskResult]) -> int:
        """Publish the task's whole result list; return the event's rev."""
        return await self._publish_with_next_rev(TaskReplace(task_record_id, 0, list(results)))

    async def status_change(
        self,
        scene_id: str,
        layer_name: str,
        action: StatusAction | str,
        new_status: LocationStatus,
        *,
        timestamp: str | None = None,
    ) -> int:
        """Publish a status change (stamped now unless ``timestamp`` is given); return its rev.

        ``action`` is a :class:`StatusAction` or any other string, which the hub forwards as is.
        """
        event = StatusChange(
            scene_id, 0, layer_name, action, new_status, timestamp or timestamp_now()
        )
        return await self._publish_with_next_rev(event)

    async def upsert_locations(
        self, scene_id: str, storage_locations: Iterable[StorageLocation]
    ) -> int:
        """Publish full records added or replaced by id; return the event's rev."""
        event = LocationsUpsert(scene_id, 0, list(storage_locations))
        return await self._publish_with_next_rev(event)

    async def remove_locations(self, scene_id: str, ids: Iterable[str]) -> int:
        """Publish the removal of locations by id; return the event's rev."""
        return await self._publish_with_next_rev(LocationsRemove(scene_id, 0, list(ids)))

    async def _publish_with_next_rev(self, event: TaskEvent | SceneEvent) -> int:
        # Everything is checked before a rev is taken, so a refused call costs nothing.
        if isinstance(event, (TaskAppend, TaskReplace)):
            is_task, id = True, event.task_record_id
            subject = self._subjects.task_events(id)
        else:
            is_task, id = False, event.scene_id
            subject = self._subjects.scene_events(id)
        event._check()
        async with self._in_rev_order:
            event.rev = self._clock.next()
            await self._send(subject, is_task, id, event.rev, to_json(event))
        return event.rev

    async def _send(self, subject: str, is_task: bool, id: str, rev: int, payload: bytes) -> None:
        if self._closed:
            raise RuntimeError("this publisher is closed")
        await self._nc.publish(subject, payload)
        self._recent.published(subject, is_task, id, rev, time.monotonic())
        if self._tipper is None and self._tip_interval is not None:
            self._tipper = asyncio.create_task(self._tip_loop(self._tip_interval))

    # --- tips ----------------------------------------------------------------------------------

    async def _tip_loop(self, interval: float) -> None:
        reconnects = self._nc.stats["reconnects"]
        next_tip = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(_RECONNECT_POLL, max(0.0, next_tip - time.monotonic())))
            now = time.monotonic()
            if not self._nc.is_connected:
                # Tips published now would only wait in the buffer; the reconnect sends them.
                continue
            came_back = self._nc.stats["reconnects"] != reconnects
            if came_back or now >= next_tip:
                reconnects = self._nc.stats["reconnects"]
                next_tip = now + interval
                await self._send_tips(now, came_back)

    async def _send_tips(self, now: float, after_reconnect: bool) -> None:
        async with self._in_rev_order:
            tips = self._recent.tips(now)
            if after_reconnect:
                log.info("NATS connection is back: tipping %d recent keys", len(tips))
            try:
                for subject, payload in tips:
                    await self._nc.publish(subject, payload)
            except Exception as error:
                log.warning("could not publish tips: %s", error)

    # --- snapshots -----------------------------------------------------------------------------

    async def serve_task_snapshots(
        self, handler: TaskSnapshotHandler
    ) -> SnapshotResponder[TaskSnapshot]:
        """Answer task snapshot requests with ``handler``, in the queue group of all replicas.

        ``handler(task_record_id)`` returns the task's :class:`TaskSnapshot`, ``None`` when the
        task does not exist, or raises (logged; the hub retries). It may be a plain function
        (run in the loop's default executor) or a coroutine function. The snapshot's ``rev``
        must be the rev of the last event its state reflects: read both together.
        """
        responder = SnapshotResponder(
            self._nc, self._subjects, handler, TaskSnapshot, self._responders.discard
        )
        await responder._start(self._subjects.all_task_snapshots, TASK_QUEUE_GROUP)
        self._responders.add(responder)
        return responder

    async def serve_scene_snapshots(
        self, handler: SceneSnapshotHandler
    ) -> SnapshotResponder[SceneSnapshot]:
        """Answer scene snapshot requests with ``handler``, in the queue group of all replicas.

        The same rules as :meth:`serve_task_snapshots`, with scene ids and
        :class:`SceneSnapshot`.
        """
        responder = SnapshotResponder(
            self._nc, self._subjects, handler, SceneSnapshot, self._responders.discard
        )
        await responder._start(self._subjects.all_scene_snapshots, SCENE_QUEUE_GROUP)
        self._responders.add(responder)
        return responder

    # --- lifetime ------------------------------------------------------------------------------

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything published so far has reached the NATS server."""
        await self._nc.flush(timeout=int(timeout) or 1)

    async def close(self) -> None:
        """Stop tipping and serving, flush what was published, and close an owned connection.

        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        if self._tipper is not None:
            self._tipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tipper
        for responder in list(self._responders):
            await responder.stop()
        if self._nc.is_connected:
            try:
                await self._nc.flush()
            except Exception as error:
                log.warning("could not flush on close: %s", error)
        if self._owns_connection:
            await self._nc.close()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

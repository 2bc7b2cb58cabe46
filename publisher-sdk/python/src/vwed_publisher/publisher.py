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
import nats.errors
from nats.aio.client import Client

from .responder import (
    SCENE_QUEUE_GROUP,
    TASK_QUEUE_GROUP,
    SceneSnapshotHandler,
    SnapshotResponder,
    TaskSnapshotHandler,
    flush_through,
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
    chained_event_json,
    listed,
    scene_tip_json,
    task_tip_json,
    timestamp_now,
)

log = logging.getLogger("vwed_publisher")

DEFAULT_TIP_INTERVAL = 5.0
"""Seconds between two tips of a key (SPEC section 3): the longest a lost event stays unhealed."""
DEFAULT_TIP_WINDOW = 60.0
"""Seconds after its last event that a key is still tipped (SPEC section 3)."""

_RECONNECT_POLL = 0.1
"""How often the tipper wakes: to send the tips due (each key's at its own phase of the
interval), and to look for a NATS reconnect, after which it tips every recent key at once.

nats-py takes its reconnect callback only at connect time, and the publisher is handed a
connection made by the service; its reconnect counter is public, so it is read instead."""


_TIPS_PER_SLICE = 500
"""Tips sent between two yields to the event loop (about 1.5 ms of work)."""


class Publisher:
    """Publishes task and scene change events to NATS on the contract's subjects.

    One publisher serves any number of coroutines: a key's events reach NATS in rev order
    however many publish at once. It also tips every key it published in the last
    ``tip_window`` seconds, once every ``tip_interval`` seconds and at once after a NATS
    reconnect, so that a hub which lost an event heals within one tip interval. The tips are
    spread over the interval, each key at its own phase of it, rather than sent in one burst: a
    hub that takes thousands of tips at once delays the events queued behind them. Each event
    it sends in that window names the key's previous rev (``prev_rev``), so that a hub which
    lost an event between two others notices it with the next one.

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

        Connect ``nc`` with ``max_reconnect_attempts=-1``, as :meth:`connect` does: nats-py's
        default gives up after 60 attempts (about two minutes of outage), and from then on
        every publish raises ``nats.errors.ConnectionClosedError``.
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
        """Seconds between two tips of a key, or ``None`` for none."""
        # With tips off no key is ever remembered, and the interval given is never used.
        self._recent = RecentKeys(tip_interval or DEFAULT_TIP_INTERVAL, tip_window)
        """The keys to tip, with their latest revs and when each is tipped next."""
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
        reconnect for ever (a service should not give up on its hub) and pings the server every
        20 s (nats-py's 2 minutes let a dead connection swallow events for about 4 minutes).
        """
        connect_options.setdefault("max_reconnect_attempts", -1)
        # nats-py pings every 2 minutes and gives up after 2 missed pongs: a dead TCP connection
        # would swallow events and tips for about 4 minutes. The hub pings its clients every 20 s.
        connect_options.setdefault("ping_interval", 20)
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
        """Publish a task event as given, with the caller's own ``rev``.

        Publish each key's events in rev order: the hub drops an event whose rev is not above
        the last one it saw for that key. An event without a ``prev_rev`` is sent with the rev
        this publisher last sent for the key, if it remembers one below ``rev``; the event
        object itself is not changed.
        """
        if not isinstance(event, (TaskAppend, TaskReplace)):
            raise TypeError(f"a task event is TaskAppend or TaskReplace, not {type(event)}")
        subject = self._subjects.task_events(event.task_record_id)
        event._check()
        async with self._in_rev_order:
            payload = self._chained(subject, event)
            await self._send(subject, True, event.task_record_id, event.rev, payload)

    async def publish_scene(self, event: SceneEvent) -> None:
        """Publish a scene event as given, with the caller's own ``rev``.

        Publish each key's events in rev order: the hub drops an event whose rev is not above
        the last one it saw for that key. An event without a ``prev_rev`` is sent with the rev
        this publisher last sent for the key, if it remembers one below ``rev``; the event
        object itself is not changed.
        """
        if not isinstance(event, (StatusChange, LocationsUpsert, LocationsRemove)):
            raise TypeError(
                "a scene event is StatusChange, LocationsUpsert or LocationsRemove, "
                f"not {type(event)}"
            )
        subject = self._subjects.scene_events(event.scene_id)
        event._check()
        async with self._in_rev_order:
            payload = self._chained(subject, event)
            await self._send(subject, False, event.scene_id, event.rev, payload)

    # --- events with the clock's revs ------------------------------------------------------------

    async def append_task_results(
        self, task_record_id: str, index: int, results: Iterable[TaskResult]
    ) -> int:
        """Publish ``results`` written at ``index`` of the task's list; return the event's rev."""
        event = TaskAppend(task_record_id, 0, index, listed("results", results, TaskResult))
        return await self._publish_with_next_rev(event)

    async def replace_task_results(self, task_record_id: str, results: Iterable[TaskResult]) -> int:
        """Publish the task's whole result list; return the event's rev."""
        return await self._publish_with_next_rev(
            TaskReplace(task_record_id, 0, listed("results", results, TaskResult))
        )

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
        event = LocationsUpsert(
            scene_id, 0, listed("storage_locations", storage_locations, StorageLocation)
        )
        return await self._publish_with_next_rev(event)

    async def remove_locations(self, scene_id: str, ids: Iterable[str]) -> int:
        """Publish the removal of locations by id; return the event's rev."""
        return await self._publish_with_next_rev(
            LocationsRemove(scene_id, 0, listed("ids", ids, str))
        )

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
            await self._send(subject, is_task, id, event.rev, self._chained(subject, event))
        return event.rev

    def _chained(self, subject: str, event: TaskEvent | SceneEvent) -> bytes:
        """The event's JSON, its ``prev_rev`` the last rev sent for the key unless it has one.

        Called under the rev-order lock, right before the event is sent: the rev looked up is
        then the one sent just before it for the key, however many coroutines publish the key
        at once. With tips off no key is remembered, and no ``prev_rev`` is filled in.
        """
        return chained_event_json(event, self._recent.last_rev(subject))

    async def _send(self, subject: str, is_task: bool, id: str, rev: int, payload: bytes) -> None:
        if self._closed:
            raise RuntimeError("this publisher is closed")
        await self._nc.publish(subject, payload)
        if self._tip_interval is None:
            return  # nothing would ever read or forget the keys
        self._recent.published(subject, is_task, id, rev, time.monotonic())
        # nats-py may wait inside publish (a full buffer), and close() may have run meanwhile:
        # a tip loop started now would outlive the publisher.
        if self._tipper is None and not self._closed:
            self._tipper = asyncio.create_task(self._tip_loop())

    async def tip_task(self, task_record_id: str) -> int:
        """Announce a fresh rev for the task with a tip and no event; return the rev.

        Every hub that holds the task below it takes a fresh snapshot (SPEC section 3, "Tips").
        For owners whose state changed in a way no event describes: changes made while the
        owner was not running, or a result that arrived out of order. The key is then tipped
        with the others for the tip window.
        """
        subject = self._subjects.task_events(task_record_id)
        async with self._in_rev_order:
            rev = self._clock.next()
            payload = task_tip_json(task_record_id, rev)
            await self._send(subject, True, task_record_id, rev, payload)
        return rev

    async def tip_scene(self, scene_id: str) -> int:
        """:meth:`tip_task` for a scene."""
        subject = self._subjects.scene_events(scene_id)
        async with self._in_rev_order:
            rev = self._clock.next()
            await self._send(subject, False, scene_id, rev, scene_tip_json(scene_id, rev))
        return rev

    # --- tips ----------------------------------------------------------------------------------

    async def _tip_loop(self) -> None:
        nc = self._nc
        reconnects = nc.stats["reconnects"]
        last_connected = time.monotonic()  # the last moment the connection was seen up
        while not nc.is_closed:  # a closed client never comes back: nothing left to tip
            await asyncio.sleep(_RECONNECT_POLL)
            now = time.monotonic()
            if not nc.is_connected:
                # Tips published now would only wait in the buffer; the reconnect sends them.
                continue
            try:
                if nc.stats["reconnects"] != reconnects:
                    reconnects = nc.stats["reconnects"]
                    # The window is counted up to when the connection was lost, however long
                    # it stayed away: the last events before the outage are the ones most
                    # likely to have been lost with it.
                    tips = self._recent.every(last_connected)
                    log.info("NATS connection is back: tipping %d recent keys", len(tips))
                else:
                    # Each round only the keys whose turn it is: spread over the interval.
                    tips = self._recent.due(now)
                await self._send_tips(tips)
            except Exception:
                # A tip loop that died would stop healing every key, silently.
                log.exception("tipping recent keys failed; trying again next round")
            last_connected = now

    async def _send_tips(self, tips: list[tuple[str, bytes]]) -> None:
        """Publish ``tips``, as (subject, payload).

        Without the rev-order lock, and yielding every few hundred tips: after a reconnect,
        with many recent keys, a round takes a while (100,000 keys, about 0.3 s), and
        publishing must not stall behind it. No lock is needed: a key's rev is noted only once
        its event was handed to nats-py, so each tip queues behind the event it names, and a
        tip that meets a newer event on the way names a rev at or below the hub's, which
        changes nothing.
        """
        try:
            for sent, (subject, payload) in enumerate(tips, 1):
                await self._nc.publish(subject, payload)
                if sent % _TIPS_PER_SLICE == 0:
                    await asyncio.sleep(0)
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
        self._check_open()
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
        self._check_open()
        responder = SnapshotResponder(
            self._nc, self._subjects, handler, SceneSnapshot, self._responders.discard
        )
        await responder._start(self._subjects.all_scene_snapshots, SCENE_QUEUE_GROUP)
        self._responders.add(responder)
        return responder

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this publisher is closed")

    # --- lifetime ------------------------------------------------------------------------------

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything published so far has reached the NATS server.

        During a NATS outage nats-py keeps what is published in its buffer and sends it when
        the connection comes back; flush then waits for that, up to ``timeout`` seconds.
        Raises ``nats.errors.FlushTimeoutError`` when the server has not confirmed in time, and
        ``nats.errors.ConnectionClosedError`` when the connection is closed for good.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # nats-py's own flush returns at once while it reconnects, as if all were sent.
        while not self._nc.is_connected:
            if self._nc.is_closed:
                raise nats.errors.ConnectionClosedError
            if loop.time() >= deadline:
                raise nats.errors.FlushTimeoutError
            await asyncio.sleep(min(_RECONNECT_POLL, max(0.0, deadline - loop.time())))
        await flush_through(self._nc, max(0.0, deadline - loop.time()))

    async def close(self) -> None:
        """Stop tipping and serving, flush what was published, and close an owned connection.

        Safe to call twice. It does not wait for a NATS outage to end: a connection made by
        :meth:`connect` is closed at once, and what nats-py still buffered for it is dropped
        (logged). A connection the service made stays open, buffer and all. To give NATS a
        while to come back first, call :meth:`flush` with a timeout before closing.
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
                await flush_through(self._nc)
            except Exception as error:
                log.warning("could not flush on close: %s", error)
        if self._owns_connection:
            if not self._nc.is_connected and self._nc.pending_data_size > 0:
                log.warning(
                    "closing while NATS is unreachable: up to %d bytes of events and tips "
                    "buffered for it are dropped; hubs see those changes only with their "
                    "keys' next events or snapshots (flush before close waits for NATS)",
                    self._nc.pending_data_size,
                )
            try:
                await self._nc.close()
            except Exception as error:
                # nats-py writes its buffer to the lost socket before closing, and raises.
                log.warning("closing the NATS connection: %r", error)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

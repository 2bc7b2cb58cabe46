"""Answering the hub's snapshot requests.

A hub asks ``<prefix>.snapshot.<kind>.<key>`` when it needs a key's current state. A responder
listens on the wildcard in a queue group shared by every replica of the service, Rust or
Python, so each request is answered once, and calls the service's handler for the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .wire import NOT_FOUND, SceneSnapshot, TaskSnapshot, to_json

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from .subject import Subjects

log = logging.getLogger("vwed_publisher")

TASK_QUEUE_GROUP = "vwed-snapshot-task"
"""The queue group of task snapshot responders: the Rust SDK's, so replicas in either share it."""
SCENE_QUEUE_GROUP = "vwed-snapshot-scene"
"""The queue group of scene snapshot responders: the Rust SDK's, so replicas in either share it."""


async def flush_through(nc: Client, timeout: float = 10.0) -> None:
    """Wait until the server has read everything handed to ``nc`` so far, up to ``timeout`` s.

    ``nc.flush()`` alone does not: nats-py writes its PING straight to the socket, ahead of the
    commands still in its buffer (a subscription, events), so the server can answer it before
    reading them. By the first PONG the buffer has gone out (nats-py's flusher runs as soon as
    the loop does); a second PING then queues behind it. nats-py takes whole seconds, so the
    wait may run up to a second over ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await nc.flush(max(1, math.ceil(timeout)))
    await nc.flush(max(1, math.ceil(deadline - loop.time())))


MAX_CONCURRENT_REQUESTS = 64
"""How many requests one responder handles at once; more wait in the subscription."""

S = TypeVar("S", TaskSnapshot, SceneSnapshot)

SnapshotHandler = Callable[[str], S | Awaitable[S | None] | None]
"""A function or coroutine function of a key that returns its snapshot, or ``None``."""

TaskSnapshotHandler = SnapshotHandler[TaskSnapshot]
"""Answers a task snapshot request: task record id in, :class:`TaskSnapshot` or ``None`` out."""
SceneSnapshotHandler = SnapshotHandler[SceneSnapshot]
"""Answers a scene snapshot request: scene id in, :class:`SceneSnapshot` or ``None`` out."""


class SnapshotResponder(Generic[S]):
    """A running snapshot responder; it serves until :meth:`stop` (or its publisher's close).

    The handler gets the key and returns its snapshot, ``None`` when the key does not exist
    (the hub tells its clients), or raises, which is logged and leaves the request unanswered
    so that the hub retries. A plain function runs in the event loop's default executor, so a
    handler that blocks on a database does not stall publishing; a coroutine function runs on
    the loop.
    """

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        handler: SnapshotHandler[S],
        snapshot_type: type[S],
        on_stop: Callable[[SnapshotResponder[Any]], None],
    ) -> None:
        """Not for direct use: see ``Publisher.serve_task_snapshots``."""
        self._nc = nc
        """Where replies go."""
        self._subjects = subjects
        """Turns a request's subject back into its key."""
        self._handler: SnapshotHandler[S] = handler
        """The service's code that reads a key's state and rev together."""
        self._is_async = inspect.iscoroutinefunction(handler)
        """Whether the handler runs on the loop (else in the executor)."""
        self._snapshot_type: type[S] = snapshot_type
        """What the handler must return, so a wrong answer is caught and never sent."""
        self._on_stop = on_stop
        """Tells the publisher, which stops its responders when it closes."""
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        """Bounds the requests in hand; past it, requests wait in the subscription."""
        self._in_flight: set[asyncio.Task[None]] = set()
        """Answers being made, so that stop can wait for them (and tasks are not collected)."""
        self._subscription: Subscription | None = None
        """The queue subscription; ``None`` once stopped."""

    async def _start(self, subject: str, queue_group: str) -> None:
        subscription = await self._nc.subscribe(subject, queue=queue_group, cb=self._on_request)
        self._subscription = subscription
        # The server has the subscription once it answers a ping: from here on, requests reach
        # this responder, which is what a caller that starts serving and then publishes expects.
        try:
            await flush_through(self._nc)
        except BaseException:
            # The caller gets no responder to stop: it must not go on serving unseen.
            self._subscription = None
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            raise

    @property
    def is_serving(self) -> bool:
        """Whether requests are still answered."""
        return self._subscription is not None

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop answering: unsubscribe, then wait up to ``timeout`` s for answers in hand."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        self._on_stop(self)
        try:
            await subscription.unsubscribe()
            # Once stop returns the server routes no more requests here.
            await flush_through(self._nc, timeout)
        except Exception as error:
            log.debug("unsubscribing a snapshot responder: %s", error)
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=timeout)
            for task in late:
                task.cancel()

    async def _on_request(self, message: Msg) -> None:
        # Called by nats-py one message at a time: waiting for a slot here keeps the next
        # request in the subscription's queue until one is free.
        await self._slots.acquire()
        task = asyncio.create_task(self._answer(message))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _answer(self, message: Msg) -> None:
        key = self._subjects.snapshot_key(message.subject)
        if not message.reply:
            log.debug("snapshot request without a reply subject on %s", message.subject)
            return
        if key is None:
            log.warning("snapshot request for a malformed key: %s", message.subject)
            return
        try:
            snapshot = await self._call(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("snapshot handler failed for %r; the hub will retry", key, exc_info=True)
            return
        payload = self._reply(key, snapshot)
        if payload is None:
            return
        try:
            await self._nc.publish(message.reply, payload)
        except Exception as error:
            log.warning("could not send the snapshot of %r: %s", key, error)

    async def _call(self, key: str) -> object:
        if self._is_async:
            result: object = self._handler(key)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, self._handler, key)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _reply(self, key: str, snapshot: object) -> bytes | None:
        """The reply's bytes, or ``None`` (logged) when the handler's answer must not go out."""
        if snapshot is None:
            return NOT_FOUND
        if not isinstance(snapshot, self._snapshot_type):
            log.error(
                "snapshot handler for %r returned %s, not %s or None; not sent",
                key,
                type(snapshot).__name__,
                self._snapshot_type.__name__,
            )
            return None
        answered = (
            snapshot.task_record_id if isinstance(snapshot, TaskSnapshot) else snapshot.scene_id
        )
        if answered != key:
            log.error("snapshot handler for %r answered for %r; not sent", key, answered)
            return None
        try:
            snapshot._check()
            return to_json(snapshot)
        except (TypeError, ValueError) as error:
            log.error("snapshot handler for %r returned a broken snapshot: %s", key, error)
            return None

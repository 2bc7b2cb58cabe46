"""The blocking face of :class:`~vwed_publisher.Publisher`, for code that is not async.

A :class:`BlockingPublisher` runs an asyncio loop on a thread of its own, with the NATS
connection and an ordinary :class:`~vwed_publisher.Publisher` on it. Each method hands its call
to that loop and waits for the result, so any number of threads can publish through one
instance and a key's events still reach NATS in rev order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Generic, TypeVar

from .publisher import DEFAULT_TIP_INTERVAL, DEFAULT_TIP_WINDOW, Publisher
from .responder import S, SceneSnapshotHandler, SnapshotResponder, TaskSnapshotHandler
from .rev import HybridClock
from .subject import DEFAULT_PREFIX, Subjects
from .wire import (
    LocationStatus,
    SceneEvent,
    SceneSnapshot,
    StatusAction,
    StorageLocation,
    TaskEvent,
    TaskResult,
    TaskSnapshot,
)

T = TypeVar("T")


class _LoopThread:
    """An event loop running on a daemon thread, and a way to run coroutines on it and wait."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        """The loop the connection and the publisher live on."""
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="vwed-publisher", daemon=True
        )
        """Runs the loop; a daemon, so a program that forgets close() still exits."""
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError(
                "a BlockingPublisher method was called on its own loop thread, where it would "
                "wait for itself; use the async Publisher (BlockingPublisher.publisher) there"
            )
        try:
            future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed: the publisher was
            coroutine.close()
            raise RuntimeError("this BlockingPublisher is closed") from None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # A call the caller gave up on must not go on and publish later, behind its back.
            future.cancel()
            # The builtin TimeoutError (on Python 3.10 the futures one is another class).
            raise TimeoutError(
                f"the publisher's loop did not finish the call in {timeout} s"
            ) from None

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class BlockingSnapshotResponder(Generic[S]):
    """A snapshot responder served by a :class:`BlockingPublisher`; :meth:`stop` blocks."""

    def __init__(self, responder: SnapshotResponder[S], loop: _LoopThread) -> None:
        """Not for direct use: see ``BlockingPublisher.serve_task_snapshots``."""
        self._responder: SnapshotResponder[S] = responder
        """The responder on the publisher's loop."""
        self._loop = loop
        """Where its stop must run."""

    @property
    def is_serving(self) -> bool:
        """Whether requests are still answered."""
        return self._responder.is_serving

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering, waiting up to ``timeout`` s for answers in hand; safe to repeat.

        Closing the publisher stops it too (and a call afterwards does nothing).
        """
        if not self._responder.is_serving:
            return
        self._loop.run(self._responder.stop(timeout), timeout + 5.0)


class BlockingPublisher:
    """A :class:`~vwed_publisher.Publisher` for code that is not async; safe from any thread.

    Example::

        with BlockingPublisher.connect("nats://127.0.0.1:4222", prefix="vwed") as bp:
            bp.append_task_results("t-1", 0, [TaskResult.now("[取货] 开始", TaskStatus.RUNNING)])

    Snapshot handlers are plain functions here; they run on the loop's executor threads, so they
    may block on a database and may publish through this same instance.
    """

    def __init__(self, loop: _LoopThread, publisher: Publisher, timeout: float) -> None:
        """Not for direct use: see :meth:`connect`."""
        self._loop = loop
        """The thread that runs the connection and the async publisher."""
        self._publisher = publisher
        """Does the work, on that thread."""
        self._timeout = timeout
        """How long a call waits for the loop before raising ``TimeoutError``."""

    @classmethod
    def connect(
        cls,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = DEFAULT_PREFIX,
        tip_interval: float | None = DEFAULT_TIP_INTERVAL,
        tip_window: float = DEFAULT_TIP_WINDOW,
        timeout: float = 10.0,
        **connect_options: Any,
    ) -> BlockingPublisher:
        """Connect to NATS on a thread of its own; the options are :meth:`Publisher.connect`'s.

        ``timeout`` bounds how long each call waits (connecting, publishing, flushing). A call
        that runs out of it raises ``TimeoutError`` and is cancelled, so it does not publish
        later behind the caller's back (unless it had already handed its event to NATS).
        """
        loop = _LoopThread()
        try:
            publisher = loop.run(
                Publisher.connect(
                    servers,
                    prefix=prefix,
                    tip_interval=tip_interval,
                    tip_window=tip_window,
                    **connect_options,
                ),
                timeout,
            )
        except BaseException:
            loop.stop()
            raise
        return cls(loop, publisher, timeout)

    @property
    def publisher(self) -> Publisher:
        """The async publisher underneath, for code that runs on its loop."""
        return self._publisher

    @property
    def subjects(self) -> Subjects:
        """The subjects this publisher uses."""
        return self._publisher.subjects

    @property
    def clock(self) -> HybridClock:
        """The clock behind :meth:`next_rev`."""
        return self._publisher.clock

    def next_rev(self) -> int:
        """The next rev of the hybrid clock (see :meth:`Publisher.next_rev`)."""
        return self._publisher.next_rev()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coroutine, self._timeout)

    def publish_task(self, event: TaskEvent) -> None:
        """Publish a task event with the caller's own rev (see :meth:`Publisher.publish_task`)."""
        self._run(self._publisher.publish_task(event))

    def publish_scene(self, event: SceneEvent) -> None:
        """Publish a scene event with the caller's own rev (see :meth:`Publisher.publish_scene`)."""
        self._run(self._publisher.publish_scene(event))

    def append_task_results(
        self, task_record_id: str, index: int, results: Iterable[TaskResult]
    ) -> int:
        """Publish results written at ``index``; return the rev."""
        return self._run(self._publisher.append_task_results(task_record_id, index, results))

    def replace_task_results(self, task_record_id: str, results: Iterable[TaskResult]) -> int:
        """Publish the task's whole result list; return the rev."""
        return self._run(self._publisher.replace_task_results(task_record_id, results))

    def status_change(
        self,
        scene_id: str,
        layer_name: str,
        action: StatusAction | str,
        new_status: LocationStatus,
        *,
        timestamp: str | None = None,
    ) -> int:
        """Publish a status change; return the rev."""
        return self._run(
            self._publisher.status_change(
                scene_id, layer_name, action, new_status, timestamp=timestamp
            )
        )

    def upsert_locations(self, scene_id: str, storage_locations: Iterable[StorageLocation]) -> int:
        """Publish full records added or replaced by id; return the rev."""
        return self._run(self._publisher.upsert_locations(scene_id, storage_locations))

    def remove_locations(self, scene_id: str, ids: Iterable[str]) -> int:
        """Publish the removal of locations by id; return the rev."""
        return self._run(self._publisher.remove_locations(scene_id, ids))

    def tip_task(self, task_record_id: str) -> int:
        """:meth:`Publisher.tip_task`, waiting for it."""
        return self._run(self._publisher.tip_task(task_record_id))

    def tip_scene(self, scene_id: str) -> int:
        """:meth:`Publisher.tip_scene`, waiting for it."""
        return self._run(self._publisher.tip_scene(scene_id))

    def serve_task_snapshots(
        self, handler: TaskSnapshotHandler
    ) -> BlockingSnapshotResponder[TaskSnapshot]:
        """Answer task snapshot requests (see :meth:`Publisher.serve_task_snapshots`)."""
        responder = self._run(self._publisher.serve_task_snapshots(handler))
        return BlockingSnapshotResponder(responder, self._loop)

    def serve_scene_snapshots(
        self, handler: SceneSnapshotHandler
    ) -> BlockingSnapshotResponder[SceneSnapshot]:
        """Answer scene snapshot requests (see :meth:`Publisher.serve_scene_snapshots`)."""
        responder = self._run(self._publisher.serve_scene_snapshots(handler))
        return BlockingSnapshotResponder(responder, self._loop)

    def flush(self) -> None:
        """Wait until everything published so far has reached the NATS server.

        Through a NATS outage too, up to the publisher's ``timeout`` (see
        :meth:`Publisher.flush`).
        """
        # A second more for the loop, so that flush's own FlushTimeoutError is what is raised.
        self._loop.run(self._publisher.flush(self._timeout), self._timeout + 1.0)

    def close(self) -> None:
        """Stop tipping and serving, flush, close the connection and the loop thread."""
        if self._loop.loop.is_closed():
            return
        try:
            self._run(self._publisher.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> BlockingPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

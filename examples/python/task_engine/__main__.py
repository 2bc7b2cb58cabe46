"""``python -m task_engine --tasks N --every S``: start tasks, then keep answering snapshots.

Tasks are numbered after those already in the database (``task-1``, ``task-2``, ...). When all
have ended the engine keeps running, so that panels opened later still get each task's state
from the database, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal

from vwed_publisher import TaskStatus

from .config import Settings
from .engine import TaskEngine, open_engine

log = logging.getLogger("task_engine")


async def run(tasks: int, every: float, step_seconds: float) -> None:
    """Start ``tasks`` tasks (0: without end), one every ``every`` seconds, until stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings = Settings.from_env()
    async with open_engine(settings, step_seconds=step_seconds) as engine:
        log.info("task engine on %s (prefix %s)", settings.nats_url, settings.subject_prefix)
        work = asyncio.create_task(_run_tasks(engine, tasks, every))
        await stop.wait()
        log.info("stopping")
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


async def _run_tasks(engine: TaskEngine, tasks: int, every: float) -> None:
    first = await engine.task_count() + 1
    numbers = itertools.count(first) if tasks == 0 else range(first, first + tasks)
    running: set[asyncio.Task[TaskStatus]] = set()
    try:
        for count, number in enumerate(numbers):
            if count:
                await asyncio.sleep(every)
            task: asyncio.Task[TaskStatus] = asyncio.create_task(engine.run_task(f"task-{number}"))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(running)
        log.info("all tasks ended; answering snapshots until Ctrl-C")
    finally:
        # Stopped early: a task's committed results stay in the database, the rest is dropped.
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m task_engine",
        description="A VWED task engine publishing task results to vwed-hub through NATS.",
    )
    parser.add_argument("--tasks", type=int, default=0, help="tasks to run (0: without end)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between task starts")
    parser.add_argument(
        "--step-seconds", type=float, default=1.0, help="about how long one block takes"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args.tasks, args.every, args.step_seconds))


if __name__ == "__main__":
    main()

"""What the compose smoke's live checkers share: failures, timing, commands, containers.

Imported by .ci/compose-smoke-panels.py (the default stack through HAProxy) and
.ci/compose-smoke-bridge.py (the bridge profile); Python puts this folder on the path of a
script run from it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable


class Failure(Exception):
    """A check that did not hold."""


def say(message: str) -> None:
    print(f"    {message}", flush=True)


def now() -> float:
    return time.monotonic()


def run(*command: str, timeout: float = 60) -> str:
    """A command's output; :class:`Failure` with its error output when it fails."""
    done = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise Failure(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def container(project: str, service: str, *, stopped_too: bool = False) -> str:
    """The id of the one container of ``service`` in compose project ``project``."""
    ids = run(
        "podman",
        "ps",
        "-aq" if stopped_too else "-q",
        "--filter",
        f"label=com.docker.compose.service={service}",
        "--filter",
        f"label=com.docker.compose.project={project}",
    ).split()
    if len(ids) != 1:
        state = "" if stopped_too else "running "
        raise Failure(f"expected one {state}container of {service}, found {ids}")
    return ids[0]


async def wait_for(
    condition: Callable[[], object],
    seconds: float,
    what: str,
    check: Callable[[], None] = lambda: None,
    poll: float = 0.05,
) -> None:
    """Wait until ``condition()`` holds; ``check()`` raises :class:`Failure` on what must not
    happen meanwhile (a panel closing); a timeout fails, naming ``what``."""
    deadline = now() + seconds
    while not condition():
        check()
        if now() > deadline:
            raise Failure(f"timed out after {seconds:.0f}s waiting until {what}")
        await asyncio.sleep(poll)

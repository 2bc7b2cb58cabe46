"""NATS subjects of the contract, and the ``<key>`` encoding that keeps any id one literal token.

SPEC section 3: ``<key>`` is the id itself when it matches ``[A-Za-z0-9_-]{1,128}``, otherwise
``~`` followed by the unpadded base64url of the id's UTF-8 bytes. So an id such as ``a.b``, ``*``
or ``>`` can never become a NATS wildcard or an extra subject token, and no client of the hub
ever receives another key's events.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable

DEFAULT_PREFIX = "vwed"
"""The subject prefix the hub uses unless told otherwise (``--subject-prefix``)."""

MAX_ID_BYTES = 256
"""Longest id accepted, in bytes of UTF-8: the hub refuses longer ones from its clients."""

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Unicode's control characters (category Cc) are exactly these 65 code points.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_ENCODED_MARK = "~"


def validate_id(id: str) -> None:
    """Raise ``ValueError`` unless ``id`` is a task record id or scene id the hub can serve.

    An id must be a non-empty string of at most 256 bytes of UTF-8 with no control character:
    the hub refuses any other id from its clients, so an event for it could never be seen.
    """
    if not isinstance(id, str):
        raise TypeError(f"an id must be a str, not {type(id).__name__}")
    if not id:
        raise ValueError("an id must not be empty")
    if (len(id) if id.isascii() else len(id.encode())) > MAX_ID_BYTES:
        raise ValueError(f"an id must be at most {MAX_ID_BYTES} bytes of UTF-8: {id[:32]!r}...")
    if _CONTROL.search(id):
        raise ValueError(f"an id must not hold a control character: {id!r}")


def encode_key(id: str) -> str:
    """Turn an id into its subject token (SPEC section 3).

    The id itself when it is ``[A-Za-z0-9_-]{1,128}``, else ``~`` and the unpadded base64url of
    its UTF-8 bytes. Either way the token holds no ``.``, ``*``, ``>`` or whitespace.
    """
    if _PLAIN_KEY.fullmatch(id):
        return id
    encoded = base64.urlsafe_b64encode(id.encode()).rstrip(b"=").decode("ascii")
    return _ENCODED_MARK + encoded


def decode_key(token: str) -> str | None:
    """Turn a subject token back into its id; ``None`` when the token is not a valid encoding."""
    if not token.startswith(_ENCODED_MARK):
        return token or None
    encoded = token[1:]
    if len(encoded) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9_-]*", encoded):
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        # Strict like the Rust SDK's decoder: unused trailing bits must be zero.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != encoded:
            return None
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` when it is dot-separated tokens of letters, digits, ``_`` and ``-``.

    Anything else (a wildcard, an empty token) raises ``ValueError``: a prefix must never widen
    what a subscriber hears.
    """
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid subject prefix {prefix!r}: use dot-separated tokens of letters, digits, "
            "'_' and '-' (e.g. vwed or prod.vwed)"
        )
    return prefix


class Subjects:
    """The subjects of one deployment, all under one prefix (the hub's ``--subject-prefix``).

    Each method validates the id (see :func:`validate_id`) and raises ``ValueError`` for one the
    hub could never serve, so nothing is published for it. Results are cached: a service
    publishes to the same keys over and over.
    """

    __slots__ = ("_prefix", "scene_events", "scene_snapshot", "task_events", "task_snapshot")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        """Subjects under ``prefix`` (for example ``vwed``, or ``staging.vwed``)."""
        self._prefix = check_prefix(prefix)

        def subject(template: str) -> Callable[[str], str]:
            @functools.lru_cache(maxsize=16384)
            def build(id: str) -> str:
                validate_id(id)
                return template.format(prefix=prefix, key=encode_key(id))

            return build

        self.task_events: Callable[[str], str] = subject("{prefix}.task.{key}.execution")
        """Where a task record's events go: ``<prefix>.task.<key>.execution``."""
        self.scene_events: Callable[[str], str] = subject("{prefix}.scene.{key}.storage")
        """Where a scene's events go: ``<prefix>.scene.<key>.storage``."""
        self.task_snapshot: Callable[[str], str] = subject("{prefix}.snapshot.task.{key}")
        """Where the hub asks for a task record's snapshot: ``<prefix>.snapshot.task.<key>``."""
        self.scene_snapshot: Callable[[str], str] = subject("{prefix}.snapshot.scene.{key}")
        """Where the hub asks for a scene's snapshot: ``<prefix>.snapshot.scene.<key>``."""

    @property
    def prefix(self) -> str:
        """The prefix these subjects start with."""
        return self._prefix

    @property
    def all_task_snapshots(self) -> str:
        """The wildcard a task snapshot responder listens on."""
        return f"{self._prefix}.snapshot.task.*"

    @property
    def all_scene_snapshots(self) -> str:
        """The wildcard a scene snapshot responder listens on."""
        return f"{self._prefix}.snapshot.scene.*"

    def snapshot_key(self, subject: str) -> str | None:
        """The id named by a snapshot request subject; ``None`` when it names none."""
        head = f"{self._prefix}.snapshot."
        if not subject.startswith(head):
            return None
        kind, _, token = subject[len(head) :].partition(".")
        if kind not in ("task", "scene") or not token or "." in token:
            return None
        return decode_key(token)

    def __repr__(self) -> str:
        return f"Subjects({self._prefix!r})"

"""Feed vwed-hub from Python: publish task and storage-location changes, answer snapshots.

VWED task engines and storage services use this package to:

* **publish change events** (task results; storage-location status changes, upserts and
  removals), each on its key's NATS subject with a ``rev`` that orders it;
* **tip** the keys they published recently, and name in each event the rev sent for its key
  before it (``prev_rev``), so that a hub which lost an event over core NATS heals within one
  tip interval, or at the key's next event;
* **answer snapshot requests**: when a hub needs a key's current state it asks over NATS
  request/reply, and a handler the service supplies answers, in a queue group shared by every
  replica of the service (Rust or Python).

:class:`Publisher` is the asyncio face, :class:`BlockingPublisher` the same for code that is not
async. The contract is SPEC section 3 of the vwed-hub repository; the Rust crate
``vwed-publisher`` implements the same one, and both are held to the golden vectors in
``publisher-sdk/vectors/``.
"""

from .blocking import BlockingPublisher, BlockingSnapshotResponder
from .publisher import DEFAULT_TIP_INTERVAL, DEFAULT_TIP_WINDOW, Publisher
from .responder import SceneSnapshotHandler, SnapshotResponder, TaskSnapshotHandler
from .rev import HybridClock
from .subject import DEFAULT_PREFIX, MAX_ID_BYTES, Subjects, decode_key, encode_key, validate_id
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
    TaskStatus,
    derive_action,
    format_timestamp,
    timestamp_now,
)

__version__ = "0.1.0"
"""The package's version: the Rust crate's too."""

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TIP_INTERVAL",
    "DEFAULT_TIP_WINDOW",
    "MAX_ID_BYTES",
    "BlockingPublisher",
    "BlockingSnapshotResponder",
    "HybridClock",
    "LocationStatus",
    "LocationsRemove",
    "LocationsUpsert",
    "Publisher",
    "SceneEvent",
    "SceneSnapshot",
    "SceneSnapshotHandler",
    "SnapshotResponder",
    "StatusAction",
    "StatusChange",
    "StorageLocation",
    "Subjects",
    "TaskAppend",
    "TaskEvent",
    "TaskReplace",
    "TaskResult",
    "TaskSnapshot",
    "TaskSnapshotHandler",
    "TaskStatus",
    "decode_key",
    "derive_action",
    "encode_key",
    "format_timestamp",
    "timestamp_now",
    "validate_id",
]

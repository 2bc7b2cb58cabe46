"""The bridge's metrics, in a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the bridge exports; names start with ``vwed_bridge_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        """A registry of its own: no process-global state, so tests can run several bridges."""
        self.polls = Counter(
            "vwed_bridge_polls",
            "Polls of the database, by result (ok, failed).",
            ["result"],
            registry=self.registry,
        )
        self.poll_seconds = Histogram(
            "vwed_bridge_poll_seconds",
            "Time of one poll: its queries and its publishing.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.events = Counter(
            "vwed_bridge_events_published",
            "Events published, by kind (append, status_change, upsert, remove, tip).",
            ["kind"],
            registry=self.registry,
        )
        self.rows_rejected = Counter(
            "vwed_bridge_rows_rejected",
            "Rows the API cannot carry, skipped, by table (locations, tasks).",
            ["table"],
            registry=self.registry,
        )
        self.snapshots = Counter(
            "vwed_bridge_snapshots",
            "Snapshot requests answered from the database, by kind and result (found, "
            "not_found, failed).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.database_up = Gauge(
            "vwed_bridge_database_up",
            "1 when the last statement sent to the database succeeded.",
            registry=self.registry,
        )
        self.nats_connected = Gauge(
            "vwed_bridge_nats_connected",
            "1 while the NATS connection is up.",
            registry=self.registry,
        )
        self.locations = Gauge(
            "vwed_bridge_locations",
            "Storage locations the bridge holds as published.",
            registry=self.registry,
        )
        self.task_gaps = Gauge(
            "vwed_bridge_task_gaps",
            "Result ids below the cursor not committed yet, read again each poll.",
            registry=self.registry,
        )

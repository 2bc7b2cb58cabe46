//! Counters and gauges served at `/metrics` in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the snapshot latency buckets: from a same-host reply to the
/// default 2 s timeout and beyond.
const SNAPSHOT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Labels naming a key kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOnly {
    /// `task` or `scene`.
    pub kind: &'static str,
}

/// Labels naming an endpoint (`task-execution`, `storage-location-broadcast`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint's path segment.
    pub endpoint: &'static str,
}

/// Labels naming a key kind and why something happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `task` or `scene`.
    pub kind: &'static str,
    /// Outcome or cause, a short fixed word.
    pub reason: &'static str,
}

/// Labels naming why something was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The cause, as in the close frame's reason (`token expired`, `too many connections`, ...).
    pub reason: &'static str,
}

/// One endpoint's counts of what its connections send.
#[derive(Debug, Clone)]
pub struct SentBytes {
    /// Bytes of the messages, as text.
    pub message: Counter,
    /// Bytes of payload written for them: less than `message` where compression pays.
    pub wire: Counter,
}

/// Every metric the hub keeps. Handles are cheap to clone and update without locks.
#[derive(Debug)]
pub struct Metrics {
    /// Owns the metric descriptions; read only when `/metrics` is scraped.
    registry: Registry,
    /// Open WebSocket connections by endpoint.
    pub connections: Family<EndpointLabels, Gauge>,
    /// Connection requests turned away, by cause: limits, origins, parameters, tokens. A rise in
    /// token causes is someone probing, or an issuer whose keys or clocks went wrong.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Messages queued to a client.
    pub messages_delivered: Counter,
    /// Messages not queued because the client's queue was full.
    pub messages_dropped: Counter,
    /// Bytes of messages sent to clients by endpoint, as text (before compression).
    pub message_bytes: Family<EndpointLabels, Counter>,
    /// Payload bytes written for those messages by endpoint (after compression): against
    /// `message_bytes`, what permessage-deflate saves on the clients' links.
    pub wire_bytes: Family<EndpointLabels, Counter>,
    /// Clients closed with 1013 because they could not keep up.
    pub slow_clients_closed: Counter,
    /// Keys the hub holds a broker subscription for.
    pub subscriptions: Gauge,
    /// Event messages received from the broker, by kind: with subscriptions only for watched
    /// keys, this grows with what the hub's own clients watch, not with all that is published.
    pub broker_messages: Family<KindOnly, Counter>,
    /// Snapshot requests by kind and outcome.
    pub snapshot_requests: Family<KindLabels, Counter>,
    /// How long owners take to answer (or to time out), by kind: the wait a new client sees.
    pub snapshot_duration: Family<KindOnly, Histogram, fn() -> Histogram>,
    /// Events and replies refused by kind and cause.
    pub events_rejected: Family<KindLabels, Counter>,
    /// Events that arrived with a rev the view already had.
    pub events_stale: Counter,
    /// Publishers' tips received, by kind (SPEC 3): about one per recently published key per
    /// tip interval (5 s) per publisher. They never reach clients.
    pub tips_received: Family<KindOnly, Counter>,
    /// 1 while the broker is connected.
    pub broker_connected: Gauge,
    /// Times the broker connection came back after a drop.
    pub broker_reconnects: Counter,
    /// TLS handshakes that failed or timed out (plain HTTP on the TLS port, untrusted
    /// certificate, silent clients): a rise after a certificate change points at it.
    pub tls_handshake_failures: Counter,
    /// Heap bytes in use (glibc's count, read at each scrape): what the hub's data needs.
    pub heap_in_use: Gauge,
    /// Heap bytes the allocator has taken from the system, in use or free (glibc's count): what
    /// it holds beyond `heap_in_use` is free memory of its own. Free pages that the periodic
    /// trim gave back still count here until reused, but no longer count in RSS
    /// (see `crate::memory`).
    pub heap_held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vwed_hub");
        let metrics = Self {
            connections: Family::default(),
            connections_refused: Family::default(),
            messages_delivered: Counter::default(),
            messages_dropped: Counter::default(),
            message_bytes: Family::default(),
            wire_bytes: Family::default(),
            slow_clients_closed: Counter::default(),
            subscriptions: Gauge::default(),
            broker_messages: Family::default(),
            snapshot_requests: Family::default(),
            snapshot_duration: Family::new_with_constructor(|| Histogram::new(SNAPSHOT_BUCKETS)),
            events_rejected: Family::default(),
            events_stale: Counter::default(),
            tips_received: Family::default(),
            broker_connected: Gauge::default(),
            broker_reconnects: Counter::default(),
            tls_handshake_failures: Counter::default(),
            heap_in_use: Gauge::default(),
            heap_held: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connection requests turned away, by cause",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages queued to clients",
            metrics.messages_delivered.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages dropped because a client queue was full",
            metrics.messages_dropped.clone(),
        );
        registry.register_with_unit(
            "message",
            "Bytes of messages sent to clients, as text before compression, by endpoint",
            Unit::Bytes,
            metrics.message_bytes.clone(),
        );
        registry.register_with_unit(
            "wire",
            "Payload bytes written for messages to clients, after compression, by endpoint",
            Unit::Bytes,
            metrics.wire_bytes.clone(),
        );
        registry.register(
            "slow_clients_closed",
            "Clients closed with 1013 for falling behind",
            metrics.slow_clients_closed.clone(),
        );
        registry.register(
            "broker_subscriptions",
            "Keys with a broker subscription",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "broker_messages_received",
            "Event messages received from the broker",
            metrics.broker_messages.clone(),
        );
        registry.register(
            "snapshot_requests",
            "Snapshot requests by outcome",
            metrics.snapshot_requests.clone(),
        );
        registry.register_with_unit(
            "snapshot_duration",
            "Time from a snapshot request to its reply, no-responders answer or timeout",
            Unit::Seconds,
            metrics.snapshot_duration.clone(),
        );
        registry.register(
            "events_rejected",
            "Events and replies refused, by cause",
            metrics.events_rejected.clone(),
        );
        registry.register(
            "events_stale",
            "Events dropped for an old rev",
            metrics.events_stale.clone(),
        );
        registry.register(
            "tips_received",
            "Publishers' tips received (the latest rev of a key; never forwarded)",
            metrics.tips_received.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while the broker is connected",
            metrics.broker_connected.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Broker reconnections",
            metrics.broker_reconnects.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            metrics.tls_handshake_failures.clone(),
        );
        if crate::memory::SUPPORTED {
            registry.register_with_unit(
                "heap_in_use",
                "Heap memory in use (glibc malloc), read at each scrape",
                Unit::Bytes,
                metrics.heap_in_use.clone(),
            );
            registry.register_with_unit(
                "heap_held",
                "Heap memory the allocator has taken from the system, in use or free, read at each scrape",
                Unit::Bytes,
                metrics.heap_held.clone(),
            );
        }
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some((held, in_use)) = crate::memory::heap_bytes() {
            self.heap_held.set(i64::try_from(held).unwrap_or(i64::MAX));
            self.heap_in_use
                .set(i64::try_from(in_use).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a snapshot request outcome.
    pub fn snapshot(&self, kind: &'static str, reason: &'static str) {
        self.snapshot_requests
            .get_or_create(&KindLabels { kind, reason })
            .inc();
    }

    /// The counter of event messages received from the broker for `kind`; a handle to keep,
    /// so that counting an event costs no lookup.
    pub fn broker_messages_counter(&self, kind: &'static str) -> Counter {
        self.broker_messages
            .get_or_create(&KindOnly { kind })
            .clone()
    }

    /// Records how long one snapshot request took.
    pub fn snapshot_took(&self, kind: &'static str, duration: std::time::Duration) {
        self.snapshot_duration
            .get_or_create(&KindOnly { kind })
            .observe(duration.as_secs_f64());
    }

    /// Counts a connection request turned away.
    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a publisher's tip for a key of `kind`.
    pub fn tip(&self, kind: &'static str) {
        self.tips_received.get_or_create(&KindOnly { kind }).inc();
    }

    /// The byte counters of connections to `endpoint`; handles to keep, so that counting a
    /// message costs no lookup.
    pub fn sent_bytes(&self, endpoint: &'static str) -> SentBytes {
        let labels = EndpointLabels { endpoint };
        SentBytes {
            message: self.message_bytes.get_or_create(&labels).clone(),
            wire: self.wire_bytes.get_or_create(&labels).clone(),
        }
    }

    /// Counts a refused event or reply.
    pub fn rejected(&self, kind: &'static str, reason: &'static str) {
        self.events_rejected
            .get_or_create(&KindLabels { kind, reason })
            .inc();
    }
}

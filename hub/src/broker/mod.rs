//! The message broker the hub listens to: one interface, so that nothing above this module knows
//! which implementation runs: NATS, or the embedded in-process bus.
//!
//! The hub needs three things of a broker: per-subject subscriptions that end when dropped,
//! request/reply for snapshots, and word of connection changes and lost messages (after which
//! every served key is re-snapshotted, since events may have been missed).

mod losses;
mod memory;
mod nats;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

pub use memory::MemoryBroker;
pub use nats::{server_list, NatsBroker};
// The `--nats-*` flags live in the SDK, shared with the demo and publishers' binaries; named
// here too because they configure this module's NATS broker.
pub use vwed_publisher::NatsFlags;

pub use losses::LossNotices;

/// What a subscription yields.
#[derive(Debug)]
pub enum Received {
    /// A payload published on the subject, in order.
    Message(Bytes),
    /// The broker dropped messages for this subscription (it fell behind): events of this key
    /// may be missing.
    Lost,
}

/// What arrives on one subject. Dropping the stream unsubscribes.
pub type Subscription = BoxStream<'static, Received>;

/// What happened to the broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerEvent {
    /// The connection is (again) up. Events published while it was down are lost.
    Connected,
    /// The connection dropped; the client reconnects by itself.
    Disconnected,
    /// The broker dropped messages for a subscriber it could not name (a subscription it
    /// names hears of it through [`Received::Lost`] instead).
    MessagesLost,
}

/// Why a request or subscription failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// Nobody listens on the request subject.
    #[error("no responders")]
    NoResponders,
    /// A responder exists but did not answer in time.
    #[error("timed out")]
    TimedOut,
    /// The broker could not take the request or subscription.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// A publish/subscribe broker with request/reply.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Subscribes to one literal subject.
    async fn subscribe(&self, subject: String) -> Result<Subscription, BrokerError>;

    /// Sends an empty request and waits up to `timeout` for the first reply.
    async fn request(&self, subject: String, timeout: Duration) -> Result<Bytes, BrokerError>;

    /// Whether the broker is connected right now.
    fn is_connected(&self) -> bool;

    /// Connection changes and lost-message notices, from now on.
    fn events(&self) -> broadcast::Receiver<BrokerEvent>;
}

//! The embedded broker: a bus inside the hub's process, for running with no NATS at all (the
//! demo, a laptop, tests). Only publishers in the same process can reach it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use vwed_publisher::memory::{MemoryBus, RequestError};

use super::{Broker, BrokerError, BrokerEvent, Subscription};

/// A [`MemoryBus`] seen as the hub's broker.
pub struct MemoryBroker {
    /// The bus that in-process publishers (e.g. the demo) share with the hub.
    bus: MemoryBus,
    /// Lost-message notices, in the hub's terms; the bus never disconnects.
    events: broadcast::Sender<BrokerEvent>,
}

impl MemoryBroker {
    /// The hub's side of `bus`, on a handle of its own (so only its own subscriptions' losses
    /// reach it). Must be called within a Tokio runtime: it forwards those notices on a task.
    pub fn new(bus: &MemoryBus) -> Self {
        let bus = bus.connect();
        let (events, _) = broadcast::channel(64);
        let mut losses = bus.losses();
        let forward = events.clone();
        tokio::spawn(async move {
            // A lagged receiver missed notices, which still means messages were lost.
            while let Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) = losses.recv().await {
                let _ = forward.send(BrokerEvent::MessagesLost);
            }
        });
        Self { bus, events }
    }

    /// The bus, for publishers that run in the hub's process.
    pub fn bus(&self) -> &MemoryBus {
        &self.bus
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, subject: String) -> Result<Subscription, BrokerError> {
        Ok(self
            .bus
            .subscribe(subject)
            .map(|message| message.payload)
            .boxed())
    }

    async fn request(&self, subject: String, timeout: Duration) -> Result<Bytes, BrokerError> {
        self.bus
            .request(&subject, Bytes::new(), timeout)
            .await
            .map_err(|error| match error {
                RequestError::NoResponders => BrokerError::NoResponders,
                RequestError::TimedOut => BrokerError::TimedOut,
                RequestError::Publish(refused) => BrokerError::Unavailable(refused.to_string()),
            })
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn events(&self) -> broadcast::Receiver<BrokerEvent> {
        self.events.subscribe()
    }
}

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

#[cfg(test)]
mod tests {
    use vwed_publisher::memory::SUBSCRIPTION_CAPACITY;

    use super::*;

    #[tokio::test]
    async fn the_hub_hears_of_its_own_lost_messages_only() {
        let bus = MemoryBus::new();
        let broker = MemoryBroker::new(&bus);
        let mut events = broker.events();
        let publisher = bus.connect();

        // Another client's stuck subscription is not the hub's concern.
        let _elsewhere = bus.subscribe("other");
        for _ in 0..=SUBSCRIPTION_CAPACITY {
            publisher.publish("other", Bytes::new()).expect("published");
        }
        let _held = broker.subscribe("mine".into()).await.expect("subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(events.try_recv().is_err());

        // Its own subscription falling behind means lost events: the hub must re-snapshot.
        for _ in 0..=SUBSCRIPTION_CAPACITY {
            publisher.publish("mine", Bytes::new()).expect("published");
        }
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert_eq!(
            event.ok().and_then(Result::ok),
            Some(BrokerEvent::MessagesLost)
        );
    }

    #[tokio::test]
    async fn requests_map_to_the_hubs_errors() {
        let bus = MemoryBus::new();
        let broker = MemoryBroker::new(&bus);
        let timeout = Duration::from_millis(20);
        let answer = broker.request("nobody".into(), timeout).await;
        assert!(matches!(answer, Err(BrokerError::NoResponders)));
        let _silent = bus.subscribe("silent");
        let answer = broker.request("silent".into(), timeout).await;
        assert!(matches!(answer, Err(BrokerError::TimedOut)));
        let answer = broker.request("a.*".into(), timeout).await;
        assert!(matches!(answer, Err(BrokerError::Unavailable(_))));
    }
}

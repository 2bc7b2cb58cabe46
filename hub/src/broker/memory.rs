//! The embedded broker: a bus inside the hub's process, for running with no NATS at all (the
//! demo, a laptop, tests). Only publishers in the same process can reach it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use vwed_publisher::memory::{MemoryBus, RequestError};

use super::{Broker, BrokerError, BrokerEvent, LossNotices, Subscription};

/// A [`MemoryBus`] seen as the hub's broker.
pub struct MemoryBroker {
    /// The bus that in-process publishers (e.g. the demo) share with the hub.
    bus: MemoryBus,
    /// Lost-message notices the bus could not pin on one subscription; it never disconnects.
    events: broadcast::Sender<BrokerEvent>,
    /// The hub's subscriptions, told when the bus drops messages for them.
    losses: LossNotices,
}

impl MemoryBroker {
    /// The hub's side of `bus`, on a handle of its own (so only its own subscriptions' losses
    /// reach it). Must be called within a Tokio runtime: it forwards those notices on a task.
    pub fn new(bus: &MemoryBus) -> Self {
        let bus = bus.connect();
        let (events, _) = broadcast::channel(64);
        let notices = LossNotices::default();
        let mut reported = bus.losses();
        let (forward, tell) = (events.clone(), notices.clone());
        tokio::spawn(async move {
            loop {
                match reported.recv().await {
                    Ok(id) if tell.lost(id) => {}
                    // Not one of ours by name, or notices were missed (which still means
                    // messages were lost): every topic takes a snapshot.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = forward.send(BrokerEvent::MessagesLost);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self {
            bus,
            events,
            losses: notices,
        }
    }

    /// The bus, for publishers that run in the hub's process.
    pub fn bus(&self) -> &MemoryBus {
        &self.bus
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, subject: String) -> Result<Subscription, BrokerError> {
        let subscription = self.bus.subscribe(subject);
        let id = subscription.id();
        Ok(self.losses.watch(
            Some(id),
            subscription.map(|message| message.payload).boxed(),
        ))
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
    async fn a_subscription_hears_of_its_own_lost_messages_and_nobody_else_does() {
        use crate::broker::Received;
        let bus = MemoryBus::new();
        let broker = MemoryBroker::new(&bus);
        let mut events = broker.events();
        let publisher = bus.connect();

        // Another client's stuck subscription is not the hub's concern.
        let _elsewhere = bus.subscribe("other");
        for _ in 0..=SUBSCRIPTION_CAPACITY {
            publisher.publish("other", Bytes::new()).expect("published");
        }
        let mut mine = broker.subscribe("mine".into()).await.expect("subscribed");
        let mut quiet = broker.subscribe("quiet".into()).await.expect("subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(events.try_recv().is_err());

        // Its own subscription falling behind means lost events for that key alone: the
        // subscription says so, ahead of the messages it kept; no topic-wide notice.
        for _ in 0..=SUBSCRIPTION_CAPACITY {
            publisher.publish("mine", Bytes::new()).expect("published");
        }
        // The notice travels through the forwarding task, so some kept messages may come first.
        let mut kept = 0;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), mine.next()).await;
            match next {
                Ok(Some(Received::Lost)) => break,
                Ok(Some(Received::Message(_))) => kept += 1,
                other => panic!("expected the loss notice, got {other:?} after {kept} messages"),
            }
        }
        assert!(
            kept < SUBSCRIPTION_CAPACITY,
            "told of the loss before the end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(events.try_recv().is_err(), "no notice for every key");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), quiet.next())
                .await
                .is_err(),
            "the other key heard nothing"
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

//! The broker on a NATS server or cluster.

use std::time::Duration;

use async_nats::{client::RequestErrorKind, connection::State, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Broker, BrokerError, BrokerEvent, Subscription};

/// Messages a subscription may hold before NATS reports a slow consumer and drops the rest.
const SUBSCRIPTION_CAPACITY: usize = 8192;

/// How long a new subscription waits for the server to confirm it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait between two reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// A NATS connection; async-nats reconnects and resubscribes on its own.
pub struct NatsBroker {
    /// The connection every subscription and request uses.
    client: async_nats::Client,
    /// Fans connection events out to whoever listens (the hub re-snapshots on them).
    events: broadcast::Sender<BrokerEvent>,
}

impl NatsBroker {
    /// Connects to `url` (a comma-separated list of servers is fine). Returns at once; when the
    /// servers are unreachable the connection is made in the background and the broker reports
    /// itself disconnected until then.
    pub async fn connect(url: &str) -> Result<Self, async_nats::ConnectError> {
        let (events, _) = broadcast::channel(64);
        let sender = events.clone();
        let client = ConnectOptions::new()
            .name("vwed-hub")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback(|attempts| {
                let exponent = u32::try_from(attempts.min(8)).unwrap_or(8);
                (Duration::from_millis(50) * 2u32.pow(exponent)).min(MAX_RECONNECT_DELAY)
            })
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    let mapped = match event {
                        Event::Connected => Some(BrokerEvent::Connected),
                        Event::Disconnected => Some(BrokerEvent::Disconnected),
                        Event::SlowConsumer(_) => Some(BrokerEvent::MessagesLost),
                        _ => None,
                    };
                    tracing::info!(%event, "nats");
                    if let Some(mapped) = mapped {
                        // Nobody listening is fine: then nobody needs to know.
                        let _ = sender.send(mapped);
                    }
                }
            })
            .connect(server_list(url))
            .await?;
        Ok(Self { client, events })
    }
}

/// The servers of a comma-separated list (async-nats itself takes one URL per string).
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

#[async_trait]
impl Broker for NatsBroker {
    async fn subscribe(&self, subject: String) -> Result<Subscription, BrokerError> {
        let subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        // A round trip makes sure the server has the subscription before the caller counts on
        // it; while disconnected, the client resubscribes on reconnect anyway.
        let _ = tokio::time::timeout(CONFIRM_TIMEOUT, self.client.flush()).await;
        Ok(subscriber.map(|message| message.payload).boxed())
    }

    async fn request(&self, subject: String, timeout: Duration) -> Result<Bytes, BrokerError> {
        let request = async_nats::Request::new()
            .payload(Bytes::new())
            .timeout(Some(timeout));
        match self.client.send_request(subject, request).await {
            Ok(reply) => Ok(reply.payload),
            Err(error) => Err(match error.kind() {
                RequestErrorKind::NoResponders => BrokerError::NoResponders,
                RequestErrorKind::TimedOut => BrokerError::TimedOut,
                _ => BrokerError::Unavailable(error.to_string()),
            }),
        }
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn events(&self) -> broadcast::Receiver<BrokerEvent> {
        self.events.subscribe()
    }
}

//! The broker on a NATS server or cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{client::RequestErrorKind, connection::State, ClientError, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use vwed_publisher::{NatsSecurity, SecurityError};

use super::{Broker, BrokerError, BrokerEvent, LossNotices, Subscription};

/// Messages a subscription may hold before NATS reports a slow consumer and drops the rest.
const SUBSCRIPTION_CAPACITY: usize = 8192;

/// How long a new subscription waits for the server to confirm it.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait between two reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The wait between attempts while the server refuses the credentials: a mistake an operator
/// fixes by hand, so retrying faster would only fill both sides' logs.
const AUTH_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A NATS connection; async-nats reconnects and resubscribes on its own.
pub struct NatsBroker {
    /// The connection every subscription and request uses.
    client: async_nats::Client,
    /// Fans connection events out to whoever listens (the hub re-snapshots on them).
    events: broadcast::Sender<BrokerEvent>,
    /// The hub's subscriptions by NATS subscription id, told when the client reports one of
    /// them as a slow consumer, so that only that key takes a fresh snapshot.
    losses: LossNotices,
}

impl NatsBroker {
    /// Connects to `url` (a comma-separated list of servers is fine) as `security` says.
    /// Returns at once; when the servers are unreachable the connection is made in the
    /// background and the broker reports itself disconnected until then. Fails only on
    /// settings that can never work (conflicting, unreadable or invalid files).
    pub async fn connect(url: &str, security: &NatsSecurity) -> Result<Self, ConnectFailure> {
        let (events, _) = broadcast::channel(64);
        let sender = events.clone();
        // Set when the server refused the credentials, so the next attempts wait longer.
        let refused = Arc::new(AtomicBool::new(false));
        let refused_for_delay = refused.clone();
        let reporter = Arc::new(Mutex::new(FailureReporter::default()));
        let losses = LossNotices::default();
        let slow = losses.clone();
        let options = ConnectOptions::new()
            .name("vwed-hub")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback(move |attempts| {
                if refused_for_delay.load(Ordering::Relaxed) {
                    return AUTH_RETRY_DELAY;
                }
                let exponent = u32::try_from(attempts.min(8)).unwrap_or(8);
                (Duration::from_millis(50) * 2u32.pow(exponent)).min(MAX_RECONNECT_DELAY)
            })
            .event_callback(move |event| {
                let (sender, refused, reporter, slow) = (
                    sender.clone(),
                    refused.clone(),
                    reporter.clone(),
                    slow.clone(),
                );
                async move {
                    let mapped = match &event {
                        Event::Connected => Some(BrokerEvent::Connected),
                        Event::Disconnected => Some(BrokerEvent::Disconnected),
                        // A key's own subscription: only it needs a snapshot. Another (the
                        // requests' inbox) or an unknown one: every key, to be safe.
                        Event::SlowConsumer(sid) if slow.lost(*sid) => None,
                        Event::SlowConsumer(_) => Some(BrokerEvent::MessagesLost),
                        _ => None,
                    };
                    match &event {
                        Event::ClientError(ClientError::Other(reason)) => {
                            let auth = is_auth_failure(reason);
                            refused.store(auth, Ordering::Relaxed);
                            report_failure(&reporter, reason, auth);
                        }
                        Event::ServerError(error) => {
                            tracing::warn!(%error, "nats server error");
                        }
                        Event::Connected => {
                            refused.store(false, Ordering::Relaxed);
                            if let Ok(mut reporter) = reporter.lock() {
                                reporter.last = None;
                            }
                            tracing::info!(%event, "nats");
                        }
                        _ => tracing::info!(%event, "nats"),
                    }
                    if let Some(mapped) = mapped {
                        // Nobody listening is fine: then nobody needs to know.
                        let _ = sender.send(mapped);
                    }
                }
            });
        let client = security.apply(options)?.connect(server_list(url)).await?;
        Ok(Self {
            client,
            events,
            losses,
        })
    }
}

/// Why the NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The security settings cannot work.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The URL or options were refused by the client.
    #[error(transparent)]
    Connect(#[from] async_nats::ConnectError),
}

/// Remembers the last connection failure, so that the same failure repeated on every retry
/// is logged once (at warn) and then only at debug, until the connection succeeds.
#[derive(Debug, Default)]
struct FailureReporter {
    /// The last failure logged at warn.
    last: Option<String>,
}

fn report_failure(reporter: &Mutex<FailureReporter>, reason: &str, auth: bool) {
    let first = match reporter.lock() {
        Ok(mut reporter) if reporter.last.as_deref() != Some(reason) => {
            reporter.last = Some(reason.to_owned());
            true
        }
        Ok(_) => false,
        // Nothing can panic while holding it; at worst the line is repeated.
        Err(_) => true,
    };
    if !first {
        tracing::debug!(reason, "nats: connection attempt failed again");
    } else if auth {
        tracing::warn!(
            reason,
            retry = ?AUTH_RETRY_DELAY,
            "nats: the server refused the hub's credentials; check --nats-user and \
             --nats-password, --nats-token, --nats-nkey or --nats-creds against the server's \
             configuration. Retrying quietly"
        );
    } else {
        tracing::warn!(reason, "nats: cannot connect; retrying quietly");
    }
}

/// Whether a connection failure means the server refused who we are.
fn is_auth_failure(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("authorization violation")
        || reason.contains("authentication")
        || reason.contains("failed signing nonce")
}

/// The id NATS gives `subscriber`, which its slow-consumer events name. async-nats keeps it
/// private but shows it in the subscriber's `Debug` (`Subscriber { sid: 7, .. }`); `None` if a
/// later version shows it otherwise, and then a slow consumer re-snapshots every key, as before.
fn subscription_id(subscriber: &async_nats::Subscriber) -> Option<u64> {
    sid_in_debug(&format!("{subscriber:?}"))
}

fn sid_in_debug(debug: &str) -> Option<u64> {
    let start = debug.find("sid: ")? + "sid: ".len();
    let digits: String = debug[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
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
        let id = subscription_id(&subscriber);
        Ok(self
            .losses
            .watch(id, subscriber.map(|message| message.payload).boxed()))
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

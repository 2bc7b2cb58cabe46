//! An in-process message bus with the NATS semantics the hub and this SDK rely on, so that the
//! hub, its publishers and their tests can run in one process with no server.
//!
//! What it keeps of NATS:
//! * subjects are dot-separated tokens; a subscription may use `*` (one token) and `>` (the
//!   rest) wildcards;
//! * every plain subscription gets every matching message; in a queue group, one member gets it;
//! * messages from one publisher reach a subscriber in the order they were published;
//! * a subscriber that falls [`SUBSCRIPTION_CAPACITY`] messages behind loses the overflow, and
//!   the loss is announced to the handle that subscribed (as NATS reports a slow consumer to its
//!   connection); each [`MemoryBus::connect`] is such a handle, like a NATS connection;
//! * subjects with wildcards cannot be published to, and payloads are limited to
//!   [`MAX_PAYLOAD`] (the NATS server's default);
//! * a request to a subject nobody listens on fails at once with "no responders"; otherwise it
//!   waits for the first reply, up to its timeout.
//!
//! What it leaves out: anything across processes, and connection loss (it never disconnects).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};

/// Messages one subscription may hold before the bus drops the overflow; the same bound the hub
/// sets on its NATS subscriptions.
pub const SUBSCRIPTION_CAPACITY: usize = 8192;

/// The largest payload the bus takes, as a NATS server does by default.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// A message as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The subject it was published on (literal, even when the subscription used wildcards).
    pub subject: String,
    /// Where a request wants its reply; `None` for a plain publish.
    pub reply: Option<String>,
    /// The bytes as published.
    pub payload: Bytes,
}

/// Why a message was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The payload is over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// The subject is empty or holds a wildcard or an empty token.
    #[error("{0:?} is not a subject one can publish to")]
    InvalidSubject(String),
}

/// Why a [`MemoryBus::request`] got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Nobody subscribes to the subject.
    #[error("no responders")]
    NoResponders,
    /// A responder exists but did not answer in time.
    #[error("timed out")]
    TimedOut,
}

/// An in-process stand-in for a NATS server. Cheap to clone; clones share one bus and one
/// handle (see [`connect`](Self::connect)).
#[derive(Clone)]
pub struct MemoryBus {
    /// Shared by every handle and (weakly) by every subscription, which removes itself on drop.
    inner: Arc<Inner>,
    /// Where this handle's subscriptions report lost messages, by subscription id; a handle of
    /// its own per [`connect`](Self::connect), so one client's slow subscriber does not alarm
    /// another (as NATS names the slow subscription to the connection that made it).
    losses: broadcast::Sender<u64>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            losses: broadcast::channel(16).0,
        }
    }
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus").finish_non_exhaustive()
    }
}

struct Inner {
    /// Who listens where. A std lock: it is never held across an `.await`, and publishing
    /// only reads it.
    routes: RwLock<Routes>,
    /// Source of subscription ids (to find a route again on drop) and of reply inboxes.
    next_id: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            routes: RwLock::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// Subscriptions by subject. Literal subjects are looked up directly, since the hub holds one
/// per watched key; the few wildcard subscriptions (snapshot responders) are scanned.
#[derive(Default)]
struct Routes {
    literal: HashMap<String, Vec<Route>>,
    wildcard: Vec<(String, Route)>,
}

/// One subscription as the bus sees it.
struct Route {
    /// Identifies the subscription when it is dropped.
    id: u64,
    /// Members of one queue group share the messages: each goes to one of them.
    queue_group: Option<String>,
    /// Where its messages go; bounded, so a stuck subscriber cannot grow memory.
    sender: mpsc::Sender<Message>,
    /// Told (with this route's id) when a message is dropped because the subscription is full;
    /// `None` for a reply inbox, where a second reply is just not wanted.
    losses: Option<broadcast::Sender<u64>>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another handle on the same bus, with its own lost-message notices, as a second NATS
    /// connection to the same server would have.
    pub fn connect(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            losses: broadcast::channel(16).0,
        }
    }

    /// Subscribes to `subject`, which may hold `*` and `>` wildcards. Dropping the subscription
    /// unsubscribes.
    pub fn subscribe(&self, subject: impl Into<String>) -> MemorySubscription {
        self.add_route(subject.into(), None, SUBSCRIPTION_CAPACITY, true)
    }

    /// Subscribes as a member of `queue_group`: each message goes to one member of the group.
    pub fn queue_subscribe(
        &self,
        subject: impl Into<String>,
        queue_group: impl Into<String>,
    ) -> MemorySubscription {
        self.add_route(
            subject.into(),
            Some(queue_group.into()),
            SUBSCRIPTION_CAPACITY,
            true,
        )
    }

    /// Publishes `payload` on the literal `subject`. Returns how many subscriptions it reached.
    pub fn publish(&self, subject: &str, payload: Bytes) -> Result<usize, PublishError> {
        self.deliver(subject, None, payload)
    }

    /// Publishes a request and waits up to `timeout` for the first reply.
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        let inbox = format!(
            "_INBOX.{}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut replies = self.add_route(inbox.clone(), None, 1, false);
        if self.deliver(subject, Some(inbox), payload)? == 0 {
            return Err(RequestError::NoResponders);
        }
        match tokio::time::timeout(timeout, replies.receiver.recv()).await {
            Ok(Some(reply)) => Ok(reply.payload),
            _ => Err(RequestError::TimedOut),
        }
    }

    /// A notice each time a subscription of this handle lost messages because it fell behind:
    /// the subscription's [`id`](MemorySubscription::id).
    pub fn losses(&self) -> broadcast::Receiver<u64> {
        self.losses.subscribe()
    }

    fn add_route(
        &self,
        subject: String,
        queue_group: Option<String>,
        capacity: usize,
        report_losses: bool,
    ) -> MemorySubscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(capacity);
        let route = Route {
            id,
            queue_group,
            sender,
            losses: report_losses.then(|| self.losses.clone()),
        };
        let mut routes = self.inner.write_routes();
        if is_wildcard(&subject) {
            routes.wildcard.push((subject.clone(), route));
        } else {
            routes
                .literal
                .entry(subject.clone())
                .or_default()
                .push(route);
        }
        MemorySubscription {
            receiver,
            id,
            subject,
            bus: Arc::downgrade(&self.inner),
        }
    }

    fn deliver(
        &self,
        subject: &str,
        reply: Option<String>,
        payload: Bytes,
    ) -> Result<usize, PublishError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(PublishError::TooLarge(payload.len()));
        }
        if subject.is_empty() || is_wildcard(subject) || subject.split('.').any(str::is_empty) {
            return Err(PublishError::InvalidSubject(subject.to_owned()));
        }
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let matching = routes.literal.get(subject).into_iter().flatten().chain(
            routes
                .wildcard
                .iter()
                .filter(|(pattern, _)| subject_matches(pattern, subject))
                .map(|(_, route)| route),
        );
        let mut plain = Vec::new();
        let mut groups: HashMap<&str, Vec<&Route>> = HashMap::new();
        for route in matching {
            match &route.queue_group {
                Some(group) => groups.entry(group).or_default().push(route),
                None => plain.push(route),
            }
        }
        let chosen = groups
            .into_values()
            .map(|members| members[fastrand::usize(..members.len())]);
        let targets: Vec<&Route> = plain.into_iter().chain(chosen).collect();
        let message = Message {
            subject: subject.to_owned(),
            reply,
            payload,
        };
        for route in &targets {
            if let Err(mpsc::error::TrySendError::Full(_)) = route.sender.try_send(message.clone())
            {
                if let Some(losses) = &route.losses {
                    // Nobody listening for losses is fine: then nobody needs to know.
                    let _ = losses.send(route.id);
                }
            }
        }
        Ok(targets.len())
    }
}

impl Inner {
    fn write_routes(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        // A panic elsewhere while holding the lock leaves the map whole (each change is one
        // insert or remove), so the data is still good to use.
        self.routes.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove_route(&self, subject: &str, id: u64) {
        let mut routes = self.write_routes();
        if is_wildcard(subject) {
            routes.wildcard.retain(|(_, route)| route.id != id);
        } else if let Some(list) = routes.literal.get_mut(subject) {
            list.retain(|route| route.id != id);
            if list.is_empty() {
                routes.literal.remove(subject);
            }
        }
    }
}

/// Messages on a [`MemoryBus`] subject, in order. Dropping it unsubscribes.
pub struct MemorySubscription {
    /// The messages the bus delivered to this subscription.
    receiver: mpsc::Receiver<Message>,
    /// Finds this subscription's route again when it is dropped.
    id: u64,
    /// The subject as subscribed, for the same reason.
    subject: String,
    /// Weak, so that a subscription outliving its bus just ends.
    bus: Weak<Inner>,
}

impl MemorySubscription {
    /// This subscription's id, as its lost-message notices name it.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Stream for MemorySubscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.remove_route(&self.subject, self.id);
        }
    }
}

fn is_wildcard(subject: &str) -> bool {
    subject.split('.').any(|token| token == "*" || token == ">")
}

/// Whether the literal `subject` matches `pattern` under NATS wildcard rules.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn wildcards_follow_nats_rules() {
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.c.d"));
        assert!(!subject_matches("a.*", "a"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.bc"));
    }

    #[tokio::test]
    async fn plain_subscribers_each_get_every_message_in_order() {
        let bus = MemoryBus::new();
        let mut first = bus.subscribe("t.1");
        let mut second = bus.subscribe("t.*");
        let _other = bus.subscribe("t.2");
        for n in 0..3u8 {
            assert_eq!(bus.publish("t.1", Bytes::from(vec![n])), Ok(2));
        }
        for subscription in [&mut first, &mut second] {
            for n in 0..3u8 {
                let message = subscription.next().await.expect("a message");
                assert_eq!(
                    (message.subject.as_str(), &message.payload[..]),
                    ("t.1", &[n][..])
                );
            }
        }
    }

    #[tokio::test]
    async fn a_queue_group_shares_messages_and_dropping_unsubscribes() {
        let bus = MemoryBus::new();
        let mut a = bus.queue_subscribe("q.>", "workers");
        let mut b = bus.queue_subscribe("q.>", "workers");
        for _ in 0..100 {
            assert_eq!(bus.publish("q.x", Bytes::new()), Ok(1));
        }
        let mut received = 0;
        for subscription in [&mut a, &mut b] {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(10), subscription.next()).await
            {
                received += 1;
            }
        }
        assert_eq!(received, 100);
        drop((a, b));
        assert_eq!(bus.publish("q.x", Bytes::new()), Ok(0));
    }

    #[test]
    fn what_nats_refuses_to_publish_is_refused() {
        let bus = MemoryBus::new();
        for subject in ["", "a.*", "a.>", "a..b", ".a"] {
            assert_eq!(
                bus.publish(subject, Bytes::new()),
                Err(PublishError::InvalidSubject(subject.into()))
            );
        }
        let huge = Bytes::from(vec![0; MAX_PAYLOAD + 1]);
        assert_eq!(
            bus.publish("a", huge),
            Err(PublishError::TooLarge(MAX_PAYLOAD + 1))
        );
    }

    #[tokio::test]
    async fn a_second_reply_is_dropped_without_a_loss_notice() {
        let bus = MemoryBus::new();
        let mut losses = bus.losses();
        for _ in 0..2 {
            let mut requests = bus.subscribe("svc");
            let responder = bus.clone();
            tokio::spawn(async move {
                while let Some(request) = requests.next().await {
                    if let Some(reply) = request.reply {
                        let _ = responder.publish(&reply, Bytes::from_static(b"hi"));
                    }
                }
            });
        }
        let reply = bus
            .request("svc", Bytes::new(), Duration::from_secs(5))
            .await;
        assert_eq!(reply, Ok(Bytes::from_static(b"hi")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(losses.try_recv().is_err());
    }

    #[tokio::test]
    async fn requests_reach_a_responder_or_fail_fast() {
        let bus = MemoryBus::new();
        let timeout = Duration::from_secs(5);
        assert_eq!(
            bus.request("svc.a", Bytes::new(), timeout).await,
            Err(RequestError::NoResponders)
        );
        let mut requests = bus.subscribe("svc.*");
        let responder = bus.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    let _ = responder.publish(&reply, Bytes::from(request.subject));
                }
            }
        });
        assert_eq!(
            bus.request("svc.a", Bytes::new(), timeout).await,
            Ok(Bytes::from("svc.a"))
        );
        let _silent = bus.subscribe("quiet");
        assert_eq!(
            bus.request("quiet", Bytes::new(), Duration::from_millis(20))
                .await,
            Err(RequestError::TimedOut)
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_loses_the_overflow_and_it_is_announced() {
        let bus = MemoryBus::new();
        let other = bus.connect();
        let (mut losses, mut others_losses) = (bus.losses(), other.losses());
        let mut slow = bus.subscribe("s");
        for _ in 0..SUBSCRIPTION_CAPACITY + 5 {
            other.publish("s", Bytes::new()).expect("published");
        }
        assert_eq!(
            losses.try_recv().ok(),
            Some(slow.id()),
            "the notice names it"
        );
        assert!(
            others_losses.try_recv().is_err(),
            "only the slow one's handle is told"
        );
        let mut kept = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, slow.next()).await {
            kept += 1;
        }
        assert_eq!(kept, SUBSCRIPTION_CAPACITY);
    }
}

//! One watched key's task: the I/O around its [`SyncCore`], and the connections watching it.
//!
//! A topic is a task that alone owns its state, so events for one key apply in order and the view
//! needs no lock. What the view does with events, tips and snapshots is the sync core's
//! (`sync.rs`, a state machine with no I/O); this task subscribes, sends the requests the core
//! asks for, keeps its timers, and carries out what the core decides for the members. It never
//! waits on the broker in its loop: subscribing and requesting are futures it polls beside
//! everything else, so joins, leaves and `get_status` are served while NATS is slow. Who
//! watches and what each was sent is the [`Audience`]'s (`audience.rs`).

use std::collections::HashSet;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{sleep, Sleep};

use super::audience::{Audience, Now};
use super::context::TopicContext;
use super::mailbox::Receiver;
use super::member::{Member, MemberId};
use super::sync::{Effects, Reply, SyncCore};
use crate::broker::{BrokerError, Received, Subscription};
use crate::messages::Envelope;
use crate::view::{self, Incoming, View};

/// A watched key's task.
pub struct Topic<V: View> {
    /// Where the view stands with the owner: the decisions.
    core: SyncCore<V>,
    /// Everything else: the broker, the timers, the members.
    shell: Shell<V>,
}

/// A request to a topic task.
#[derive(Debug)]
pub enum Command<F> {
    /// A connection starts watching.
    Join(Member<F>),
    /// A connection stopped watching.
    Leave(MemberId),
    /// A connection asked for the current state.
    GetStatus(MemberId),
    /// Events may have been lost: take a fresh snapshot.
    Resnapshot,
}

/// Removes the topic of the key it is given from its registry if nobody is a member; true when
/// it did (a join that came meanwhile keeps it). Made by the registry, so that a topic needs
/// nothing of the registry's map.
pub(super) type Departure = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The I/O and the members around a topic's core; carries out its [`Effects`].
struct Shell<V: View> {
    /// The task record id or scene id, as clients and publishers spell it.
    id: String,
    /// Broker, subjects, settings, metrics.
    context: Arc<TopicContext>,
    /// Removes this topic from the registry when its last member leaves.
    departure: Departure,
    /// Joins, leaves, status requests and resnapshot orders.
    commands: Receiver<Command<V::Filter>>,
    /// The key's events; `None` until subscribed (and again if the broker closed it).
    events: Option<Subscription>,
    /// A subscription on its way; a snapshot request follows it.
    subscribing: Option<BoxFuture<'static, Result<Subscription, BrokerError>>>,
    /// The snapshot request on its way.
    request: Option<BoxFuture<'static, Result<Bytes, BrokerError>>>,
    /// When the core wants [`SyncCore::on_retry_due`].
    retry: Option<Pin<Box<Sleep>>>,
    /// The members and what each was sent.
    audience: Audience<V>,
    /// Causes already logged at warn level, so a broken publisher cannot flood the log.
    warned: HashSet<&'static str>,
    /// The counter of broker messages for this key's kind, looked up once rather than per event.
    received: Counter,
}

impl<V: View> Topic<V> {
    pub(super) fn new(
        id: String,
        context: Arc<TopicContext>,
        departure: Departure,
        commands: Receiver<Command<V::Filter>>,
    ) -> Self {
        let received = context.metrics.broker_messages_counter(V::KIND.label());
        Self {
            core: SyncCore::new(id.clone()),
            shell: Shell {
                audience: Audience::new(Envelope::new(V::KIND, &id)),
                id,
                context,
                departure,
                commands,
                events: None,
                subscribing: None,
                request: None,
                retry: None,
                warned: HashSet::new(),
                received,
            },
        }
    }

    /// Serves the key until its last member leaves.
    pub async fn run(mut self) {
        let kind = V::KIND.label();
        tracing::debug!(kind, id = %self.shell.id, "watching");
        let Self { core, shell } = &mut self;
        core.start(shell);
        loop {
            tokio::select! {
                command = shell.commands.recv() => {
                    let Some(command) = command else { break };
                    if shell.on_command(command, core) == Continue::Stop {
                        break;
                    }
                }
                received = next_event(&mut shell.events) => match received {
                    Some(Received::Message(payload)) => {
                        shell.received.inc();
                        shell.on_payload(&payload, core);
                    }
                    Some(Received::Lost) => {
                        tracing::info!(kind, id = %shell.id, "NATS dropped events of this key; re-snapshotting");
                        core.on_lost(shell);
                    }
                    None => {
                        tracing::warn!(kind, id = %shell.id, "subscription ended; resubscribing");
                        shell.events = None;
                        shell.context.metrics.subscriptions.dec();
                        core.on_lost(shell);
                    }
                },
                subscribed = poll_slot(&mut shell.subscribing) => match subscribed {
                    Ok(subscription) => {
                        shell.events = Some(subscription);
                        shell.context.metrics.subscriptions.inc();
                        shell.send_request();
                    }
                    Err(error) => {
                        tracing::warn!(kind, id = %shell.id, %error, "cannot subscribe; retrying");
                        core.on_reply(Reply::Failed("unavailable"), shell);
                    }
                },
                reply = poll_slot(&mut shell.request) => {
                    let reply = shell.read_reply(reply);
                    core.on_reply(reply, shell);
                }
                () = poll_sleep(&mut shell.retry) => core.on_retry_due(shell),
                () = shell.audience.next_tick(), if shell.audience.has_groups() => {
                    shell.audience.on_due_ticks(core.view(), core.version());
                }
            }
        }
        if shell.events.is_some() {
            shell.context.metrics.subscriptions.dec();
        }
        tracing::debug!(kind, id = %shell.id, "no longer watched");
    }
}

impl<V: View> Effects<V> for Shell<V> {
    fn request_snapshot(&mut self) {
        if self.events.is_some() {
            self.send_request();
            return;
        }
        // Subscribe first, so that no event published after the snapshot is missed; the request
        // goes out once the subscription is in place.
        let broker = self.context.broker.clone();
        let subject = view::event_subject(V::KIND, &self.context.subjects, &self.id);
        self.subscribing = Some(Box::pin(async move { broker.subscribe(subject).await }));
    }

    fn retry_in(&mut self, delay: Duration) {
        self.retry = Some(Box::pin(sleep(delay)));
    }

    fn forward(&mut self, event: &V::Event) {
        self.audience.forward(event);
    }

    fn notice(&mut self, event: &V::Event, notice: V::Notice) {
        self.audience.notice(event, notice);
    }

    fn deliver_owed(&mut self, view: Option<&V>, version: u64, failing: bool) {
        let now = Now {
            id: &self.id,
            view,
            version,
            failing,
        };
        self.audience.deliver_owed(now);
    }

    fn vanished(&mut self) {
        self.audience.vanished(&self.id);
    }

    fn reject(&mut self, cause: &'static str, detail: &dyn Display) {
        let kind = V::KIND.label();
        self.context.metrics.rejected(kind, cause);
        if self.warned.insert(cause) {
            tracing::warn!(kind, id = %self.id, cause, %detail, "refused a payload (further ones of this cause are logged at debug)");
        } else {
            tracing::debug!(kind, id = %self.id, cause, %detail, "refused a payload");
        }
    }

    fn stale_event(&mut self) {
        self.context.metrics.events_stale.inc();
    }

    fn snapshot_outcome(&mut self, outcome: &'static str) {
        self.context.metrics.snapshot(V::KIND.label(), outcome);
    }
}

impl<V: View> Shell<V> {
    fn on_command(&mut self, command: Command<V::Filter>, core: &mut SyncCore<V>) -> Continue {
        match command {
            Command::Join(member) => self.audience.join(member, now(&self.id, core)),
            Command::GetStatus(id) => self.audience.request_status(id, now(&self.id, core)),
            Command::Leave(id) => {
                self.audience.leave(id);
                if (self.departure)(&self.id) {
                    return Continue::Stop;
                }
            }
            Command::Resnapshot => core.on_lost(self),
        }
        Continue::Go
    }

    /// A payload on the key's subject: an event or a tip, for the core; anything else refused.
    fn on_payload(&mut self, payload: &[u8], core: &mut SyncCore<V>) {
        match view::parse_incoming::<V>(&self.id, payload) {
            Ok(Incoming::Event(event)) => {
                core.on_event(event, payload.len(), self);
                self.audience.event_done();
            }
            Ok(Incoming::Tip(rev)) => {
                self.context.metrics.tip(V::KIND.label());
                core.on_tip(rev, self);
            }
            Err(error) => self.reject(error.cause(), &error),
        }
    }

    /// Sends the snapshot request (the subscription is in place).
    fn send_request(&mut self) {
        let broker = self.context.broker.clone();
        let metrics = self.context.metrics.clone();
        let subject = view::snapshot_subject(V::KIND, &self.context.subjects, &self.id);
        let timeout = self.context.snapshot_timeout;
        self.request = Some(Box::pin(async move {
            let started = std::time::Instant::now();
            let reply = broker.request(subject, timeout).await;
            metrics.snapshot_took(V::KIND.label(), started.elapsed());
            reply
        }));
    }

    /// What a snapshot request's outcome means for the core.
    fn read_reply(&mut self, reply: Result<Bytes, BrokerError>) -> Reply<V> {
        match reply {
            Ok(payload) => match view::parse_snapshot::<V>(&self.id, &payload) {
                Ok(Some((rev, view))) => Reply::Found(rev, view),
                Ok(None) => Reply::NotFound,
                Err(error) => {
                    self.reject(error.cause(), &error);
                    Reply::Failed("malformed")
                }
            },
            Err(BrokerError::NoResponders) => Reply::Failed("no_responders"),
            Err(BrokerError::TimedOut) => Reply::Failed("timeout"),
            Err(BrokerError::Unavailable(_)) => Reply::Failed("unavailable"),
        }
    }
}

/// The view as the core holds it now, for serving members.
fn now<'a, V: View>(id: &'a str, core: &'a SyncCore<V>) -> Now<'a, V> {
    Now {
        id,
        view: core.view(),
        version: core.version(),
        failing: core.is_failing(),
    }
}

#[derive(PartialEq)]
enum Continue {
    Go,
    Stop,
}

async fn next_event(events: &mut Option<Subscription>) -> Option<Received> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// The output of the future in `slot`, which is then emptied; pending while the slot is empty.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    let Some(future) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let output = future.await;
    *slot = None;
    output
}

/// Resolves when the timer in `slot` fires, emptying it; pending while the slot is empty.
async fn poll_sleep(slot: &mut Option<Pin<Box<Sleep>>>) {
    let Some(timer) = slot.as_mut() else {
        return std::future::pending().await;
    };
    timer.await;
    *slot = None;
}

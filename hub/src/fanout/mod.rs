//! Fan-out: from broker events to the connections that watch each key.
//!
//! [`Registry`] maps keys to `topic` tasks; each topic owns its key's view and its members'
//! queues. Connections see only [`FanOut::join`], the [`Watcher`] it returns and their [`Inbox`].

mod audience;
mod context;
mod mailbox;
mod member;
mod registry;
mod sync;
#[cfg(test)]
mod sync_props;
mod topic;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::broker::BrokerEvent;
use crate::messages::Kind;
use crate::metrics::Metrics;
use crate::view::{LocationFilter, SceneView, TaskView};

pub use context::TopicContext;
pub use member::{outbox, Delivery, GiveUp, Inbox, Member, MemberId, Mode, Next, Outbox};
pub use registry::{Membership, Registry};

/// How long lost-message notices are gathered before the snapshots they call for.
const LOST_MESSAGES_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Both kinds of topics, and what they share.
pub struct FanOut {
    /// Task records being watched.
    pub tasks: Registry<TaskView>,
    /// Scenes being watched.
    pub scenes: Registry<SceneView>,
    /// Broker, subjects, settings and metrics.
    context: Arc<TopicContext>,
    /// Whether the broker connection has dropped since the hub started: only a connection
    /// after a drop counts as a reconnect (the first one is just the start).
    dropped_once: std::sync::atomic::AtomicBool,
}

impl FanOut {
    /// Empty registries over `context`.
    pub fn new(context: Arc<TopicContext>) -> Self {
        Self {
            tasks: Registry::new(context.clone()),
            scenes: Registry::new(context.clone()),
            dropped_once: std::sync::atomic::AtomicBool::new(false),
            context,
        }
    }

    /// Adds a connection to the topic of key `id` of `kind`: realtime with `interval` (and, for
    /// a scene, `filter`), or broadcast without one. Dropping what it returns leaves.
    pub fn join(
        &self,
        kind: Kind,
        id: &str,
        interval: Option<std::time::Duration>,
        filter: &LocationFilter,
        outbox: Outbox,
    ) -> Watcher {
        match kind {
            Kind::Task => {
                let mode = interval.map_or(Mode::Broadcast, |interval| Mode::Realtime {
                    filter: (),
                    interval,
                });
                Watcher::Task(self.tasks.join(id, Member::new(mode, outbox)))
            }
            Kind::Scene => {
                let mode = interval.map_or(Mode::Broadcast, |interval| Mode::Realtime {
                    filter: filter.clone(),
                    interval,
                });
                Watcher::Scene(self.scenes.join(id, Member::new(mode, outbox)))
            }
        }
    }

    /// Whether the broker is connected now: a hub without it cannot serve a new key.
    pub fn broker_connected(&self) -> bool {
        self.context.broker.is_connected()
    }

    /// Where the hub counts what it does.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.context.metrics
    }

    /// Keeps every topic in step with the broker: after a reconnect or lost messages, core NATS
    /// may have dropped events, so every watched key takes a fresh snapshot. Runs until the
    /// broker's event stream ends.
    pub async fn follow_broker(self: Arc<Self>) {
        let mut events = self.context.broker.events();
        let metrics = &self.context.metrics;
        metrics
            .broker_connected
            .set(i64::from(self.context.broker.is_connected()));
        loop {
            let Some(event) = next_broker_event(&mut events).await else {
                return;
            };
            let mut resnapshot = self.note(event);
            if event == BrokerEvent::MessagesLost {
                // The client reports every dropped message: let a burst of notices settle into
                // one round of snapshots.
                tokio::time::sleep(LOST_MESSAGES_SETTLE).await;
                while let Some(later) = pending_broker_event(&mut events) {
                    resnapshot |= self.note(later);
                }
            }
            if resnapshot {
                tracing::info!(
                    tasks = self.tasks.len(),
                    scenes = self.scenes.len(),
                    "events may have been lost; re-snapshotting every watched key"
                );
                self.tasks.resnapshot_all();
                self.scenes.resnapshot_all();
            }
        }
    }

    /// Records a broker event; true when it means events may have been lost.
    fn note(&self, event: BrokerEvent) -> bool {
        let metrics = &self.context.metrics;
        match event {
            BrokerEvent::Connected => {
                metrics.broker_connected.set(1);
                if self.dropped_once.load(std::sync::atomic::Ordering::Relaxed) {
                    metrics.broker_reconnects.inc();
                }
                tracing::info!("broker connected");
                true
            }
            BrokerEvent::Disconnected => {
                metrics.broker_connected.set(0);
                self.dropped_once
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("broker disconnected; clients stay connected while it reconnects");
                false
            }
            BrokerEvent::MessagesLost => {
                tracing::warn!("the broker dropped messages for a subscriber that fell behind");
                true
            }
        }
    }
}

/// One connection's place in its key's topic, whatever the key's kind. Dropping it leaves.
pub enum Watcher {
    /// A task record's topic.
    Task(Membership<()>),
    /// A scene's topic.
    Scene(Membership<LocationFilter>),
}

impl Watcher {
    /// Asks the topic to send this connection the current state now.
    pub fn request_status(&self) {
        match self {
            Watcher::Task(membership) => membership.request_status(),
            Watcher::Scene(membership) => membership.request_status(),
        }
    }
}

/// The next broker event; falling behind the event stream itself counts as lost messages.
async fn next_broker_event(events: &mut broadcast::Receiver<BrokerEvent>) -> Option<BrokerEvent> {
    match events.recv().await {
        Ok(event) => Some(event),
        Err(broadcast::error::RecvError::Lagged(_)) => Some(BrokerEvent::MessagesLost),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

/// A broker event that is already waiting, if any.
fn pending_broker_event(events: &mut broadcast::Receiver<BrokerEvent>) -> Option<BrokerEvent> {
    match events.try_recv() {
        Ok(event) => Some(event),
        Err(broadcast::error::TryRecvError::Lagged(_)) => Some(BrokerEvent::MessagesLost),
        Err(_) => None,
    }
}

//! Fan-out: from broker events to the connections that watch each key.
//!
//! [`Registry`] maps keys to [`topic`] tasks; each topic owns its key's view and its members'
//! queues. Connections see only [`Registry::join`], [`Membership`] and their [`Inbox`].

mod member;
mod registry;
mod topic;

use std::sync::Arc;

use crate::broker::BrokerEvent;
use crate::view::{SceneView, TaskView};

pub use member::{outbox, Delivery, Inbox, Member, MemberId, Mode, Outbox};
pub use registry::{Membership, Registry, TopicContext};

/// How long lost-message notices are gathered before the snapshots they call for.
const LOST_MESSAGES_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Both kinds of topics, and what they share.
pub struct FanOut {
    /// Task records being watched.
    pub tasks: Registry<TaskView>,
    /// Scenes being watched.
    pub scenes: Registry<SceneView>,
    /// Broker, subjects, settings and metrics.
    pub context: Arc<TopicContext>,
}

impl FanOut {
    /// Empty registries over `context`.
    pub fn new(context: Arc<TopicContext>) -> Self {
        Self {
            tasks: Registry::new(context.clone()),
            scenes: Registry::new(context.clone()),
            context,
        }
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
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    BrokerEvent::MessagesLost
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            match event {
                BrokerEvent::Connected => {
                    metrics.broker_connected.set(1);
                    metrics.broker_reconnects.inc();
                    tracing::info!(
                        tasks = self.tasks.len(),
                        scenes = self.scenes.len(),
                        "broker connected; re-snapshotting every watched key"
                    );
                }
                BrokerEvent::Disconnected => {
                    metrics.broker_connected.set(0);
                    tracing::warn!(
                        "broker disconnected; clients stay connected while it reconnects"
                    );
                    continue;
                }
                BrokerEvent::MessagesLost => {
                    // The client reports every dropped message: let a burst of notices settle
                    // into one round of snapshots.
                    tokio::time::sleep(LOST_MESSAGES_SETTLE).await;
                    while let Ok(later) = events.try_recv() {
                        match later {
                            BrokerEvent::Connected => {
                                metrics.broker_connected.set(1);
                            }
                            BrokerEvent::Disconnected => {
                                metrics.broker_connected.set(0);
                            }
                            BrokerEvent::MessagesLost => {}
                        }
                    }
                    tracing::warn!("broker dropped messages; re-snapshotting every watched key");
                }
            }
            self.tasks.resnapshot_all();
            self.scenes.resnapshot_all();
        }
    }
}

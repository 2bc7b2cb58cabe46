//! Key → topic. A topic exists while at least one connection watches its key: created by the
//! first join, removed (and unsubscribed) by the last leave.
//!
//! Joins count themselves in the topic's member counter *while holding the map entry*, and a
//! topic removes itself only through `remove_if` that sees the counter at zero under the same
//! shard lock. So a join that races the last leave either keeps the old topic alive or creates a
//! new one; it never lands in a topic that is shutting down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::context::TopicContext;
use super::mailbox::{self, Sender};
use super::member::{Member, MemberId};
use super::topic::{Command, Departure, Topic};
use crate::view::View;

/// How the registry and connections reach one topic task.
pub(super) struct TopicHandle<F> {
    /// Tells this topic from a later one for the same key.
    pub serial: u64,
    /// Joined and not yet left; the topic ends when it reaches zero.
    pub members: Arc<AtomicUsize>,
    /// Unbounded because leaves must never be lost or wait; the number of commands in flight is
    /// bounded by the number of connections.
    pub commands: Sender<Command<F>>,
}

impl<F> Clone for TopicHandle<F> {
    fn clone(&self) -> Self {
        Self {
            serial: self.serial,
            members: self.members.clone(),
            commands: self.commands.clone(),
        }
    }
}

/// The topics of one kind of key.
pub struct Registry<V: View> {
    /// The live topics by id; shared with each topic so it can remove itself.
    topics: Arc<DashMap<String, TopicHandle<V::Filter>>>,
    /// Handed to each new topic.
    context: Arc<TopicContext>,
}

/// One connection's place in a topic. Dropping it leaves the topic.
pub struct Membership<F> {
    /// This member's id within the topic.
    id: MemberId,
    /// The topic's command channel and member counter.
    topic: TopicHandle<F>,
    /// Shared with the topic: a status request is already on its way.
    status_requested: Arc<AtomicBool>,
}

impl<F> Membership<F> {
    /// Asks the topic to send this member the current state now (once, however often it is
    /// asked before the topic gets to it).
    pub fn request_status(&self) {
        if !self.status_requested.swap(true, Ordering::AcqRel) {
            let _ = self.topic.commands.send(Command::GetStatus(self.id));
        }
    }
}

impl<F> Drop for Membership<F> {
    fn drop(&mut self) {
        self.topic.members.fetch_sub(1, Ordering::AcqRel);
        // A topic that is already gone needs no leave.
        let _ = self.topic.commands.send(Command::Leave(self.id));
    }
}

impl<V: View> Registry<V> {
    /// An empty registry whose topics use `context`.
    pub fn new(context: Arc<TopicContext>) -> Self {
        Self {
            topics: Arc::new(DashMap::new()),
            context,
        }
    }

    /// Adds `member` to the topic of `id`, creating the topic if nobody watches `id` yet.
    pub fn join(&self, id: &str, member: Member<V::Filter>) -> Membership<V::Filter> {
        let member_id = member.id;
        let status_requested = member.status_requested.clone();
        let mut command = Command::Join(member);
        loop {
            let topic = {
                let entry = self
                    .topics
                    .entry(id.to_owned())
                    .or_insert_with(|| self.spawn_topic(id));
                entry.members.fetch_add(1, Ordering::AcqRel);
                entry.clone()
            };
            match topic.commands.send(command) {
                Ok(()) => {
                    return Membership {
                        id: member_id,
                        topic,
                        status_requested,
                    }
                }
                Err(returned) => {
                    // The topic task ended without removing itself (it cannot, short of a
                    // bug); replace it rather than lose the member.
                    tracing::error!(id, "topic task ended unexpectedly; restarting it");
                    self.topics.remove_if(id, |_, h| h.serial == topic.serial);
                    command = returned;
                }
            }
        }
    }

    /// Asks every topic to take a fresh snapshot (after a reconnect or lost messages).
    pub fn resnapshot_all(&self) {
        for topic in self.topics.iter() {
            let _ = topic.commands.send(Command::Resnapshot);
        }
    }

    /// How many keys are watched.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no key is watched.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    fn spawn_topic(&self, id: &str) -> TopicHandle<V::Filter> {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let (commands, receiver) = mailbox::mailbox();
        let handle = TopicHandle {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            members: Arc::new(AtomicUsize::new(0)),
            commands,
        };
        let (topics, serial, members) =
            (self.topics.clone(), handle.serial, handle.members.clone());
        // Removes the topic of `id` if nobody is a member: under the map's shard lock, and only
        // this topic (never a successor for the same key).
        let departure: Departure = Box::new(move |id| {
            members.load(Ordering::Acquire) == 0
                && topics
                    .remove_if(id, |_, handle| {
                        handle.serial == serial && handle.members.load(Ordering::Acquire) == 0
                    })
                    .is_some()
        });
        let topic = Topic::<V>::new(id.to_owned(), self.context.clone(), departure, receiver);
        tokio::spawn(topic.run());
        handle
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vwed_publisher::{MemoryBus, Subjects};

    use super::*;
    use crate::broker::MemoryBroker;
    use crate::fanout::{outbox, Mode};
    use crate::metrics::Metrics;
    use crate::view::TaskView;

    /// Under churn, nothing per key or per member may outlive the last member of a key: the
    /// hub that served 100,000 sessions should hold what it held before the first.
    #[tokio::test]
    async fn nothing_is_kept_for_a_key_after_its_last_member_left() {
        let bus = MemoryBus::new();
        let metrics = Arc::new(Metrics::default());
        let registry = Registry::<TaskView>::new(Arc::new(TopicContext {
            broker: Arc::new(MemoryBroker::new(&bus)),
            subjects: Subjects::default(),
            snapshot_timeout: Duration::from_millis(50),
            metrics: metrics.clone(),
        }));
        for round in 0..3 {
            let members: Vec<_> = (0..200)
                .map(|i| {
                    let (outbox, inbox) = outbox(8, metrics.clone());
                    let key = format!("churn-{round}-{}", i % 20);
                    let membership = registry.join(&key, Member::new(Mode::Broadcast, outbox));
                    (membership, inbox)
                })
                .collect();
            assert_eq!(registry.len(), 20);
            // Half leave while the others stay: their keys stay watched.
            let (leaving, staying): (Vec<_>, Vec<_>) =
                members.into_iter().enumerate().partition(|(i, _)| *i < 100);
            drop(leaving);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(registry.len(), 20, "every key still has a member");
            drop(staying);
            let emptied = tokio::time::timeout(Duration::from_secs(5), async {
                while !registry.is_empty() || metrics.subscriptions.get() != 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(
                emptied.is_ok(),
                "round {round}: {} keys and {} subscriptions left",
                registry.len(),
                metrics.subscriptions.get()
            );
        }
    }
}

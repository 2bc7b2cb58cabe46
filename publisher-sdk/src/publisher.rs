//! Publishing change events.

use std::sync::Arc;

use bytes::Bytes;

use crate::link::Link;
use crate::memory::MemoryBus;
use crate::rev::HybridClock;
use crate::subject::Subjects;
use crate::wire::{
    timestamp_now, LocationStatus, SceneChange, SceneEvent, StatusAction, StorageLocation,
    TaskChange, TaskEvent, TaskResult,
};
use crate::Error;

/// Publishes task and scene change events to NATS on the contract's subjects.
///
/// Cheap to clone; clones share the connection and the rev clock.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// The connection events go out on: NATS, or a bus inside this process.
    link: Link,
    /// Maps ids to subjects, so the SDK and the hub always agree.
    subjects: Subjects,
    /// Issues revs for the convenience methods; shared so that clones never reuse a rev.
    clock: Arc<HybridClock>,
    /// Held from taking a rev until its event is handed to the connection, so that concurrent
    /// callers publish in rev order (the hub drops an event whose rev is not above the last).
    in_rev_order: Arc<tokio::sync::Mutex<()>>,
}

impl Publisher {
    /// A publisher on the NATS connection `client`, with the default subject prefix `vwed`.
    pub fn new(client: async_nats::Client) -> Self {
        Self::on(Link::Nats(client))
    }

    /// A publisher on a bus inside this process (the hub's embedded broker, or a test's), with
    /// the default subject prefix `vwed`.
    pub fn in_process(bus: MemoryBus) -> Self {
        Self::on(Link::Memory(bus))
    }

    fn on(link: Link) -> Self {
        Self {
            link,
            subjects: Subjects::default(),
            clock: Arc::new(HybridClock::new()),
            in_rev_order: Arc::default(),
        }
    }

    /// Uses subjects under `prefix` instead of `vwed`; it must match the hub's `--subject-prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subjects = Subjects::new(prefix);
        self
    }

    /// The subjects this publisher uses.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The next rev of this publisher's hybrid clock. Take it while you write the state it
    /// versions (see the crate docs), then publish an event carrying it.
    pub fn next_rev(&self) -> u64 {
        self.clock.next()
    }

    /// The clock behind [`next_rev`](Self::next_rev), e.g. to [`observe`](HybridClock::observe)
    /// the highest rev found in the store at start-up.
    pub fn clock(&self) -> &HybridClock {
        &self.clock
    }

    /// Publishes a task event exactly as given, with the caller's own `rev`. Publish each key's
    /// events in rev order: the hub drops an event whose rev is not above the last it saw.
    pub async fn publish_task(&self, event: &TaskEvent) -> Result<(), Error> {
        let subject = self.subjects.task_events(&event.task_record_id);
        self.publish_json(subject, event).await
    }

    /// Publishes a scene event exactly as given, with the caller's own `rev`. Publish each key's
    /// events in rev order: the hub drops an event whose rev is not above the last it saw.
    pub async fn publish_scene(&self, event: &SceneEvent) -> Result<(), Error> {
        let subject = self.subjects.scene_events(&event.scene_id);
        self.publish_json(subject, event).await
    }

    /// Publishes `results` written at `index` of the task's list, with the next clock rev.
    /// Returns that rev.
    pub async fn append_task_results(
        &self,
        task_record_id: &str,
        index: u64,
        results: Vec<TaskResult>,
    ) -> Result<u64, Error> {
        self.task_change(task_record_id, TaskChange::Append { index, results })
            .await
    }

    /// Publishes the task's whole result list, with the next clock rev. Returns that rev.
    pub async fn replace_task_results(
        &self,
        task_record_id: &str,
        results: Vec<TaskResult>,
    ) -> Result<u64, Error> {
        self.task_change(task_record_id, TaskChange::Replace { results })
            .await
    }

    /// Publishes a status change stamped now, with the next clock rev. Returns that rev.
    pub async fn status_change(
        &self,
        scene_id: &str,
        layer_name: &str,
        action: StatusAction,
        new_status: LocationStatus,
    ) -> Result<u64, Error> {
        let change = SceneChange::StatusChange {
            layer_name: layer_name.to_owned(),
            action,
            timestamp: timestamp_now(),
            new_status,
        };
        self.scene_change(scene_id, change).await
    }

    /// Publishes full records added or replaced, with the next clock rev. Returns that rev.
    pub async fn upsert_locations(
        &self,
        scene_id: &str,
        storage_locations: Vec<StorageLocation>,
    ) -> Result<u64, Error> {
        self.scene_change(scene_id, SceneChange::Upsert { storage_locations })
            .await
    }

    /// Publishes the removal of locations by id, with the next clock rev. Returns that rev.
    pub async fn remove_locations(&self, scene_id: &str, ids: Vec<String>) -> Result<u64, Error> {
        self.scene_change(scene_id, SceneChange::Remove { ids })
            .await
    }

    /// Waits until everything published so far has been written to the NATS server.
    pub async fn flush(&self) -> Result<(), Error> {
        self.link.flush().await
    }

    /// Publishes `payload` on `subject` exactly as given, with no checks: for tools and tests
    /// that need to send what the typed methods would refuse to.
    pub async fn publish_raw(&self, subject: String, payload: Bytes) -> Result<(), Error> {
        self.link.publish(subject, payload).await
    }

    async fn task_change(&self, task_record_id: &str, change: TaskChange) -> Result<u64, Error> {
        let _in_order = self.in_rev_order.lock().await;
        let event = TaskEvent {
            task_record_id: task_record_id.to_owned(),
            rev: self.next_rev(),
            change,
        };
        self.publish_task(&event).await?;
        Ok(event.rev)
    }

    async fn scene_change(&self, scene_id: &str, change: SceneChange) -> Result<u64, Error> {
        let _in_order = self.in_rev_order.lock().await;
        let event = SceneEvent {
            scene_id: scene_id.to_owned(),
            rev: self.next_rev(),
            change,
        };
        self.publish_scene(&event).await?;
        Ok(event.rev)
    }

    async fn publish_json(
        &self,
        subject: String,
        payload: &impl serde::Serialize,
    ) -> Result<(), Error> {
        let payload = Bytes::from(serde_json::to_vec(payload).map_err(Error::Encode)?);
        self.link.publish(subject, payload).await
    }
}

//! Publishing change events.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::link::Link;
use crate::memory::MemoryBus;
use crate::rev::HybridClock;
use crate::subject::{validate_id, Subjects};
use crate::tips::{Tipper, DEFAULT_TIP_INTERVAL, DEFAULT_TIP_WINDOW};
use crate::wire::{
    timestamp_now, Keyed, LocationStatus, SceneChange, SceneEvent, SceneTip, StatusAction,
    StorageLocation, TaskChange, TaskEvent, TaskResult, TaskTip,
};
use crate::Error;

/// Publishes task and scene change events to NATS on the contract's subjects.
///
/// Every typed method checks the task record id or scene id first (see [`validate_id`]) and
/// returns [`Error::InvalidId`] when it is not valid, before taking a rev or sending anything;
/// only [`publish_raw`](Self::publish_raw) sends whatever it is given.
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
    /// Tips every key published lately (SPEC 3), so that a hub that lost an event heals within
    /// one tip interval; its task ends when the last clone of this publisher is dropped.
    tipper: Arc<Tipper>,
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
            tipper: Arc::new(Tipper::new(Some(DEFAULT_TIP_INTERVAL), DEFAULT_TIP_WINDOW)),
        }
    }

    /// Tips each key published in the last `window` every `interval` (default 5 s and 60 s),
    /// and all of them at once after a NATS reconnect; `None` turns tips off (only for tests
    /// and tools: without tips a lost event stays lost until the key changes again). Call it
    /// before publishing.
    pub fn with_tips(mut self, interval: Option<Duration>, window: Duration) -> Self {
        self.tipper = Arc::new(Tipper::new(interval, window));
        self
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
    ///
    /// Fails with [`Error::InvalidId`], sending nothing, when `task_record_id` is not valid.
    ///
    /// A `prev_rev` left `None` is filled in with the rev this publisher last sent for the task
    /// (see [`TaskEvent::prev_rev`]); one that is not below `rev` fails with
    /// [`Error::InvalidEvent`], sending nothing.
    pub async fn publish_task(&self, event: &TaskEvent) -> Result<(), Error> {
        validate_id(&event.task_record_id).map_err(Error::InvalidId)?;
        event.check().map_err(Error::InvalidEvent)?;
        self.publish_task_unchecked(Cow::Borrowed(event)).await
    }

    /// Publishes a scene event exactly as given, with the caller's own `rev`. Publish each key's
    /// events in rev order: the hub drops an event whose rev is not above the last it saw.
    ///
    /// Fails with [`Error::InvalidId`], sending nothing, when `scene_id` is not valid.
    ///
    /// `prev_rev` as for [`publish_task`](Self::publish_task).
    pub async fn publish_scene(&self, event: &SceneEvent) -> Result<(), Error> {
        validate_id(&event.scene_id).map_err(Error::InvalidId)?;
        event.check().map_err(Error::InvalidEvent)?;
        self.publish_scene_unchecked(Cow::Borrowed(event)).await
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

    /// Announces a fresh clock rev for the task with a tip and no event: every hub that holds
    /// the task below it takes a fresh snapshot (SPEC section 3, "Tips"). For owners whose state
    /// changed in a way no event describes: changes made while the owner was not running, or a
    /// result that arrived out of order. The key is tipped again with the others for the tip
    /// window. Returns the rev.
    pub async fn tip_task(&self, task_record_id: &str) -> Result<u64, Error> {
        self.tip(true, task_record_id).await
    }

    /// [`tip_task`](Self::tip_task) for a scene.
    pub async fn tip_scene(&self, scene_id: &str) -> Result<u64, Error> {
        self.tip(false, scene_id).await
    }

    async fn tip(&self, is_task: bool, id: &str) -> Result<u64, Error> {
        validate_id(id).map_err(Error::InvalidId)?;
        let _in_order = self.in_rev_order.lock().await;
        let rev = self.next_rev();
        let subject = if is_task {
            let subject = self.subjects.task_events(id);
            let tip = TaskTip {
                task_record_id: id.to_owned(),
                rev,
            };
            self.publish_json(subject.clone(), &tip).await?;
            subject
        } else {
            let subject = self.subjects.scene_events(id);
            let tip = SceneTip {
                scene_id: id.to_owned(),
                rev,
            };
            self.publish_json(subject.clone(), &tip).await?;
            subject
        };
        self.tipper
            .published(&self.link, &subject, is_task, id, rev);
        Ok(rev)
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
        validate_id(task_record_id).map_err(Error::InvalidId)?;
        let _in_order = self.in_rev_order.lock().await;
        let rev = self.next_rev();
        let event = TaskEvent {
            task_record_id: task_record_id.to_owned(),
            rev,
            prev_rev: None,
            change,
        };
        self.publish_task_unchecked(Cow::Owned(event)).await?;
        Ok(rev)
    }

    async fn scene_change(&self, scene_id: &str, change: SceneChange) -> Result<u64, Error> {
        validate_id(scene_id).map_err(Error::InvalidId)?;
        let _in_order = self.in_rev_order.lock().await;
        let rev = self.next_rev();
        let event = SceneEvent {
            scene_id: scene_id.to_owned(),
            rev,
            prev_rev: None,
            change,
        };
        self.publish_scene_unchecked(Cow::Owned(event)).await?;
        Ok(rev)
    }

    /// [`publish_task`](Self::publish_task) once its id has been checked.
    async fn publish_task_unchecked(&self, mut event: Cow<'_, TaskEvent>) -> Result<(), Error> {
        let subject = self.subjects.task_events(&event.task_record_id);
        if event.prev_rev.is_none() {
            if let Some(prev_rev) = self.tipper.prev_rev(&subject, event.rev) {
                event.to_mut().prev_rev = Some(prev_rev);
            }
        }
        self.publish_json(subject.clone(), &*event).await?;
        self.tipper
            .published(&self.link, &subject, true, &event.task_record_id, event.rev);
        Ok(())
    }

    /// [`publish_scene`](Self::publish_scene) once its id has been checked.
    async fn publish_scene_unchecked(&self, mut event: Cow<'_, SceneEvent>) -> Result<(), Error> {
        let subject = self.subjects.scene_events(&event.scene_id);
        if event.prev_rev.is_none() {
            if let Some(prev_rev) = self.tipper.prev_rev(&subject, event.rev) {
                event.to_mut().prev_rev = Some(prev_rev);
            }
        }
        self.publish_json(subject.clone(), &*event).await?;
        self.tipper
            .published(&self.link, &subject, false, &event.scene_id, event.rev);
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;
    use crate::subject::InvalidId;
    use crate::wire::TaskStatus;

    /// Every typed method refuses each kind of invalid id, and nothing reaches the bus: not the
    /// event, and no other message instead of it.
    #[tokio::test]
    async fn invalid_ids_are_refused_before_anything_is_sent() {
        let bus = MemoryBus::new();
        let mut everything = bus.subscribe(">");
        let publisher = Publisher::in_process(bus.clone());
        let result = TaskResult {
            created_at: "2025-06-11T12:00:00.000Z".into(),
            context: "[取货] 开始".into(),
            status: TaskStatus::Running,
        };
        let location = StorageLocation::new("s-1", "L-1", "area-A", "A-01", 1);
        let too_long = "x".repeat(crate::subject::MAX_ID_BYTES + 1);
        for (id, expected) in [
            ("", InvalidId::Empty),
            (too_long.as_str(), InvalidId::TooLong),
            ("a\nb", InvalidId::ControlCharacter),
            ("t\u{7f}", InvalidId::ControlCharacter),
        ] {
            let task_event = TaskEvent {
                task_record_id: id.to_owned(),
                rev: 1,
                prev_rev: None,
                change: TaskChange::Replace { results: vec![] },
            };
            let scene_event = SceneEvent {
                scene_id: id.to_owned(),
                rev: 1,
                prev_rev: None,
                change: SceneChange::Remove { ids: vec![] },
            };
            let refusals = [
                ("publish_task", publisher.publish_task(&task_event).await),
                ("publish_scene", publisher.publish_scene(&scene_event).await),
                (
                    "append_task_results",
                    publisher
                        .append_task_results(id, 0, vec![result.clone()])
                        .await
                        .map(drop),
                ),
                (
                    "replace_task_results",
                    publisher
                        .replace_task_results(id, vec![result.clone()])
                        .await
                        .map(drop),
                ),
                (
                    "status_change",
                    publisher
                        .status_change(id, "A-01-1", StatusAction::Occupy, location.status())
                        .await
                        .map(drop),
                ),
                (
                    "upsert_locations",
                    publisher
                        .upsert_locations(id, vec![location.clone()])
                        .await
                        .map(drop),
                ),
                (
                    "remove_locations",
                    publisher
                        .remove_locations(id, vec!["L-1".into()])
                        .await
                        .map(drop),
                ),
            ];
            for (method, refusal) in refusals {
                assert!(
                    matches!(refusal, Err(Error::InvalidId(invalid)) if invalid == expected),
                    "{method}({id:?}): {refusal:?}"
                );
            }
        }

        // The bus delivers in publish order: a valid event published last arrives first only
        // when nothing was published before it.
        publisher
            .replace_task_results("t-1", vec![result])
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), everything.next())
            .await
            .expect("the valid event arrives")
            .expect("the subscription is open");
        assert_eq!(first.subject, "vwed.task.t-1.execution");
    }

    /// Each event names the rev this publisher sent for its key just before it (an event's or
    /// a tip's), so a hub that lost one in between notices at the next; keys do not share a
    /// chain, a caller's own `prev_rev` is kept, and one not below `rev` is refused unsent.
    #[tokio::test]
    async fn events_are_chained_to_the_rev_published_before_them_for_their_key() {
        let bus = MemoryBus::new();
        let mut everything = bus.subscribe(">");
        let publisher = Publisher::in_process(bus.clone());
        let result = TaskResult::now("[取货] 开始", TaskStatus::Running);
        let location = StorageLocation::new("s-1", "L-1", "area-A", "A-01", 1);
        let first = publisher
            .replace_task_results("t-1", vec![result.clone()])
            .await
            .unwrap();
        publisher
            .upsert_locations("s-1", vec![location.clone()])
            .await
            .unwrap();
        let second = publisher
            .append_task_results("t-1", 1, vec![result.clone()])
            .await
            .unwrap();
        let tipped = publisher.tip_task("t-1").await.unwrap();
        let own = TaskEvent {
            task_record_id: "t-1".into(),
            rev: publisher.next_rev(),
            prev_rev: Some(3),
            change: TaskChange::Replace { results: vec![] },
        };
        publisher.publish_task(&own).await.unwrap();
        let after_tip = publisher
            .append_task_results("t-1", 0, vec![result.clone()])
            .await
            .unwrap();
        let broken = TaskEvent {
            prev_rev: Some(own.rev + 1),
            ..own.clone()
        };
        assert!(matches!(
            publisher.publish_task(&broken).await,
            Err(Error::InvalidEvent(
                crate::wire::PayloadError::BrokenChain { .. }
            ))
        ));
        let mut chains = Vec::new();
        for _ in 0..6 {
            let message = tokio::time::timeout(Duration::from_secs(5), everything.next())
                .await
                .expect("a message")
                .expect("the subscription is open");
            let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            chains.push((
                value["rev"].as_u64().unwrap(),
                value.get("prev_rev").cloned(),
            ));
        }
        let prev = |rev: u64| Some(serde_json::Value::from(rev));
        assert_eq!(
            chains
                .iter()
                .map(|(_, prev)| prev.clone())
                .collect::<Vec<_>>(),
            vec![None, None, prev(first), None, prev(3), prev(own.rev)],
            "{chains:?}"
        );
        assert_eq!(chains[3].0, tipped);
        assert!(after_tip > own.rev && own.rev > tipped && tipped > second);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), everything.next())
                .await
                .is_err(),
            "the broken event was not sent"
        );

        // Without tips nothing is remembered, so nothing is chained.
        let untipped = Publisher::in_process(bus.clone()).with_tips(None, DEFAULT_TIP_WINDOW);
        for _ in 0..2 {
            untipped
                .upsert_locations("s-2", vec![location.clone()])
                .await
                .unwrap();
            let message = everything.next().await.unwrap();
            assert!(!message.payload.windows(8).any(|w| w == b"prev_rev"));
        }
    }

    /// Tips go out on each recent key's event subject every interval, naming its latest rev,
    /// until the window passes; dropping the publisher stops them.
    #[tokio::test]
    async fn recent_keys_are_tipped_with_their_latest_rev() {
        let bus = MemoryBus::new();
        let mut tasks = bus.subscribe("vwed.task.*.execution");
        let publisher = Publisher::in_process(bus.clone())
            .with_tips(Some(Duration::from_millis(100)), Duration::from_millis(600));
        let result = TaskResult::now("[取货] 开始", TaskStatus::Running);
        publisher
            .append_task_results("t-1", 0, vec![result.clone()])
            .await
            .expect("publish");
        let rev = publisher
            .append_task_results("t-1", 1, vec![result])
            .await
            .expect("publish");
        let mut tips = 0;
        let tip = format!(r#"{{"task_record_id":"t-1","rev":{rev},"op":"tip"}}"#);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, tasks.next()).await {
            if message.payload.ends_with(br#""op":"tip"}"#) {
                assert_eq!(std::str::from_utf8(&message.payload).unwrap(), tip);
                tips += 1;
            }
        }
        // Every 100 ms for the 600 ms window, then none.
        assert!((4..=8).contains(&tips), "{tips} tips");
        drop(publisher);
    }

    /// A tip without an event carries a fresh rev above every rev published before it, on the
    /// key's event subject, so every hub below it re-snapshots; the next event goes above it.
    #[tokio::test]
    async fn a_key_can_be_tipped_without_an_event() {
        let bus = MemoryBus::new();
        let mut tasks = bus.subscribe("vwed.task.*.execution");
        let mut scenes = bus.subscribe("vwed.scene.*.storage");
        let publisher = Publisher::in_process(bus.clone()).with_tips(None, DEFAULT_TIP_WINDOW);
        let result = TaskResult::now("[取货] 开始", TaskStatus::Running);
        let appended = publisher
            .append_task_results("t-1", 0, vec![result.clone()])
            .await
            .expect("publish");
        let task_tip = publisher.tip_task("t-1").await.expect("tip");
        let scene_tip = publisher.tip_scene("s 1").await.expect("tip");
        let next = publisher
            .append_task_results("t-1", 1, vec![result])
            .await
            .expect("publish");
        assert!(appended < task_tip && task_tip < scene_tip && scene_tip < next);

        let mut task_payloads = Vec::new();
        for _ in 0..3 {
            let message = tokio::time::timeout(Duration::from_secs(5), tasks.next())
                .await
                .expect("arrives")
                .expect("open");
            task_payloads.push(String::from_utf8(message.payload.to_vec()).unwrap());
        }
        assert_eq!(
            task_payloads[1],
            format!(r#"{{"task_record_id":"t-1","rev":{task_tip},"op":"tip"}}"#)
        );
        let scene = tokio::time::timeout(Duration::from_secs(5), scenes.next())
            .await
            .expect("arrives")
            .expect("open");
        assert_eq!(scene.subject, "vwed.scene.~cyAx.storage");
        assert_eq!(
            std::str::from_utf8(&scene.payload).unwrap(),
            format!(r#"{{"scene_id":"s 1","rev":{scene_tip},"kind":"tip"}}"#)
        );
        assert!(matches!(
            publisher.tip_scene("").await,
            Err(Error::InvalidId(_))
        ));
    }
}

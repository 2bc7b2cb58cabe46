//! An owner service (task engine and storage service in one) that keeps its state in memory,
//! publishes every change through the SDK and answers snapshots through the SDK, reading state
//! and rev together as the contract asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::TestBroker;
use vwed_publisher::{
    LocationStatus, Publisher, SceneChange, SceneEvent, SceneSnapshot, SnapshotResponder,
    StatusAction, StorageLocation, TaskChange, TaskEvent, TaskResult, TaskSnapshot, TaskStatus,
};

#[derive(Default)]
struct State {
    tasks: HashMap<String, (u64, Vec<TaskResult>)>,
    scenes: HashMap<String, (u64, Vec<StorageLocation>)>,
}

/// Test controls for the snapshot responder.
#[derive(Default)]
struct Behaviour {
    /// Wait this long after reading the state before replying (the state is then old).
    reply_delay: Duration,
}

/// The owning service of tasks and scenes.
pub struct Owner {
    publisher: Publisher,
    state: Arc<Mutex<State>>,
    behaviour: Arc<std::sync::Mutex<Behaviour>>,
    responders: Vec<SnapshotResponder>,
}

impl Owner {
    /// Connects to `broker` and answers snapshots.
    pub async fn start(broker: &TestBroker) -> Self {
        let mut owner = Self::start_silent(broker).await;
        owner.answer_snapshots().await;
        owner
    }

    /// Publishes on `publisher` (e.g. one connected to a chosen node of a NATS cluster) and
    /// answers snapshots on it.
    pub async fn on(publisher: Publisher) -> Self {
        let mut owner = Self {
            publisher,
            state: Arc::default(),
            behaviour: Arc::default(),
            responders: Vec::new(),
        };
        owner.answer_snapshots().await;
        owner
    }

    /// Connects to `broker` but does not answer snapshots (yet).
    pub async fn start_silent(broker: &TestBroker) -> Self {
        Self {
            publisher: broker.publisher().await,
            state: Arc::default(),
            behaviour: Arc::default(),
            responders: Vec::new(),
        }
    }

    /// Starts answering snapshot requests.
    pub async fn answer_snapshots(&mut self) {
        let (state, behaviour) = (self.state.clone(), self.behaviour.clone());
        let tasks = self
            .publisher
            .serve_task_snapshots(move |id: String| {
                let (state, behaviour) = (state.clone(), behaviour.clone());
                async move {
                    let snapshot =
                        state
                            .lock()
                            .await
                            .tasks
                            .get(&id)
                            .map(|(rev, results)| TaskSnapshot {
                                task_record_id: id.clone(),
                                rev: *rev,
                                results: results.clone(),
                            });
                    let delay = behaviour.lock().map(|b| b.reply_delay).unwrap_or_default();
                    tokio::time::sleep(delay).await;
                    Ok::<_, String>(snapshot)
                }
            })
            .await
            .expect("task responder");
        let (state, behaviour) = (self.state.clone(), self.behaviour.clone());
        let scenes =
            self.publisher
                .serve_scene_snapshots(move |id: String| {
                    let (state, behaviour) = (state.clone(), behaviour.clone());
                    async move {
                        let snapshot =
                            state.lock().await.scenes.get(&id).map(|(rev, locations)| {
                                SceneSnapshot {
                                    scene_id: id.clone(),
                                    rev: *rev,
                                    storage_locations: locations.clone(),
                                }
                            });
                        let delay = behaviour.lock().map(|b| b.reply_delay).unwrap_or_default();
                        tokio::time::sleep(delay).await;
                        Ok::<_, String>(snapshot)
                    }
                })
                .await
                .expect("scene responder");
        self.responders = vec![tasks, scenes];
        self.publisher.flush().await.expect("flush");
    }

    /// Stops answering snapshot requests.
    pub fn stop_answering(&mut self) {
        self.responders.clear();
    }

    /// Makes snapshot replies leave `delay` after the state was read.
    pub fn delay_replies(&self, delay: Duration) {
        if let Ok(mut behaviour) = self.behaviour.lock() {
            behaviour.reply_delay = delay;
        }
    }

    /// The publisher, for publishing raw events.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Appends one result to a task (creating it), publishing the change.
    pub async fn append(&self, task: &str, context: &str, status: TaskStatus) {
        // Held across the publish, so concurrent changes publish in rev order.
        let mut state = self.state.lock().await;
        let event = self.record_append(&mut state, task, context, status);
        self.publisher.publish_task(&event).await.expect("publish");
        drop(state);
        self.flush().await;
    }

    /// Appends one result like [`append`](Self::append) but returns the event instead of
    /// publishing it, as if it were lost on the way.
    pub async fn append_unpublished(
        &self,
        task: &str,
        context: &str,
        status: TaskStatus,
    ) -> TaskEvent {
        let mut state = self.state.lock().await;
        self.record_append(&mut state, task, context, status)
    }

    /// Appends a result to the owner's state with a new rev; the event that tells of it.
    fn record_append(
        &self,
        state: &mut State,
        task: &str,
        context: &str,
        status: TaskStatus,
    ) -> TaskEvent {
        let (rev, results) = state.tasks.entry(task.to_owned()).or_default();
        let result = TaskResult::now(context, status);
        results.push(result.clone());
        *rev = self.publisher.next_rev();
        TaskEvent {
            task_record_id: task.to_owned(),
            rev: *rev,
            prev_rev: None,
            change: TaskChange::Append {
                index: results.len() as u64 - 1,
                results: vec![result],
            },
        }
    }

    /// Replaces a task's result list, publishing the change.
    pub async fn replace(&self, task: &str, results: Vec<TaskResult>) {
        let mut state = self.state.lock().await;
        let entry = state.tasks.entry(task.to_owned()).or_default();
        entry.0 = self.publisher.next_rev();
        entry.1 = results.clone();
        let event = TaskEvent {
            task_record_id: task.to_owned(),
            rev: entry.0,
            prev_rev: None,
            change: TaskChange::Replace { results },
        };
        self.publisher.publish_task(&event).await.expect("publish");
        drop(state);
        self.flush().await;
    }

    /// Sets a task's results without publishing (as if they existed before anyone watched).
    pub async fn seed_task(&self, task: &str, results: Vec<TaskResult>) {
        let rev = self.publisher.next_rev();
        self.state
            .lock()
            .await
            .tasks
            .insert(task.to_owned(), (rev, results));
    }

    /// Sets a scene's locations without publishing (as if they existed before anyone watched).
    pub async fn seed_scene(&self, scene: &str, locations: Vec<StorageLocation>) {
        let rev = self.publisher.next_rev();
        self.state
            .lock()
            .await
            .scenes
            .insert(scene.to_owned(), (rev, locations));
    }

    /// Changes one location's status with `change`, publishing a status change with `action`.
    pub async fn change_status(
        &self,
        scene: &str,
        id: &str,
        action: StatusAction,
        change: impl FnOnce(&mut StorageLocation),
    ) {
        let event = self
            .change_status_unpublished(scene, id, action, change)
            .await;
        self.publisher.publish_scene(&event).await.expect("publish");
        self.flush().await;
    }

    /// [`change_status`](Self::change_status) without publishing: the event that tells of it,
    /// for a test to lose or publish itself.
    pub async fn change_status_unpublished(
        &self,
        scene: &str,
        id: &str,
        action: StatusAction,
        change: impl FnOnce(&mut StorageLocation),
    ) -> SceneEvent {
        let mut state = self.state.lock().await;
        let (rev, locations) = state.scenes.get_mut(scene).expect("known scene");
        let location = locations
            .iter_mut()
            .find(|l| l.id == id)
            .expect("known location");
        change(location);
        location.updated_at = Some(vwed_publisher::timestamp_now());
        *rev = self.publisher.next_rev();
        let event = SceneEvent {
            scene_id: scene.to_owned(),
            rev: *rev,
            prev_rev: None,
            change: SceneChange::StatusChange {
                layer_name: location.layer_name.clone(),
                action,
                timestamp: vwed_publisher::timestamp_now(),
                new_status: location.status(),
            },
        };
        drop(state);
        event
    }

    /// Adds or replaces full records, publishing an upsert.
    pub async fn upsert(&self, scene: &str, records: Vec<StorageLocation>) {
        let mut state = self.state.lock().await;
        let (rev, locations) = state.scenes.entry(scene.to_owned()).or_default();
        for record in &records {
            locations.retain(|l| l.id != record.id);
            locations.push(record.clone());
        }
        *rev = self.publisher.next_rev();
        let event = SceneEvent {
            scene_id: scene.to_owned(),
            rev: *rev,
            prev_rev: None,
            change: SceneChange::Upsert {
                storage_locations: records,
            },
        };
        self.publisher.publish_scene(&event).await.expect("publish");
        drop(state);
        self.flush().await;
    }

    /// Removes locations, publishing a removal.
    pub async fn remove(&self, scene: &str, ids: &[&str]) {
        let mut state = self.state.lock().await;
        let (rev, locations) = state.scenes.get_mut(scene).expect("known scene");
        locations.retain(|l| !ids.contains(&l.id.as_str()));
        *rev = self.publisher.next_rev();
        let event = SceneEvent {
            scene_id: scene.to_owned(),
            rev: *rev,
            prev_rev: None,
            change: SceneChange::Remove {
                ids: ids.iter().map(|id| id.to_string()).collect(),
            },
        };
        self.publisher.publish_scene(&event).await.expect("publish");
        drop(state);
        self.flush().await;
    }

    /// Forgets a scene, as a store restored from a backup without it would: snapshots then
    /// answer "not found". Publishes nothing (the contract has no event for it).
    pub async fn forget_scene(&self, scene: &str) {
        self.state.lock().await.scenes.remove(scene);
    }

    /// Sets a task's results and rev as they were in a backup (a rev below what was published
    /// since), publishing nothing.
    pub async fn restore_task(&self, task: &str, rev: u64, results: Vec<TaskResult>) {
        self.state
            .lock()
            .await
            .tasks
            .insert(task.to_owned(), (rev, results));
    }

    /// Appends a result with the given rev (the owner's own version counter, e.g. after a
    /// restore), publishing the change.
    pub async fn append_at_rev(&self, task: &str, rev: u64, context: &str) {
        let mut state = self.state.lock().await;
        let (held, results) = state.tasks.entry(task.to_owned()).or_default();
        let result = TaskResult::now(context, TaskStatus::Running);
        results.push(result.clone());
        *held = rev;
        let event = TaskEvent {
            task_record_id: task.to_owned(),
            rev,
            prev_rev: None,
            change: TaskChange::Append {
                index: results.len() as u64 - 1,
                results: vec![result],
            },
        };
        self.publisher.publish_task(&event).await.expect("publish");
        drop(state);
        self.flush().await;
    }

    /// The rev of a task's state.
    pub async fn task_rev(&self, task: &str) -> u64 {
        self.state
            .lock()
            .await
            .tasks
            .get(task)
            .map_or(0, |(rev, _)| *rev)
    }

    /// Publishes a tip naming the task's current rev, as the SDK does every tip interval.
    pub async fn tip_task(&self, task: &str) {
        let tip = vwed_publisher::TaskTip {
            task_record_id: task.to_owned(),
            rev: self.task_rev(task).await,
        };
        let subject = self.publisher.subjects().task_events(task);
        let payload = serde_json::to_vec(&tip).expect("a tip encodes");
        self.publisher
            .publish_raw(subject, payload.into())
            .await
            .expect("publish");
        self.flush().await;
    }

    /// Publishes a tip for a scene naming `rev`.
    pub async fn tip_scene(&self, scene: &str, rev: u64) {
        let tip = vwed_publisher::SceneTip {
            scene_id: scene.to_owned(),
            rev,
        };
        let subject = self.publisher.subjects().scene_events(scene);
        let payload = serde_json::to_vec(&tip).expect("a tip encodes");
        self.publisher
            .publish_raw(subject, payload.into())
            .await
            .expect("publish");
        self.flush().await;
    }

    /// What endpoint 1 should show for `task` now: the `data` of its state message.
    pub async fn task_data(&self, task: &str) -> Value {
        let state = self.state.lock().await;
        json!(state
            .tasks
            .get(task)
            .map(|(_, r)| r.clone())
            .unwrap_or_default())
    }

    /// The `storage_locations` endpoint 3 should show for `scene` with `keep` as the filter, in
    /// the documented order.
    pub async fn scene_locations(
        &self,
        scene: &str,
        keep: impl Fn(&StorageLocation) -> bool,
    ) -> Value {
        let state = self.state.lock().await;
        let mut locations: Vec<StorageLocation> = state
            .scenes
            .get(scene)
            .map(|(_, l)| l.iter().filter(|l| keep(l)).cloned().collect())
            .unwrap_or_default();
        locations.sort_by(|a, b| {
            vwed_hub::view::natural_cmp(&a.station_name, &b.station_name)
                .then(a.layer_index.cmp(&b.layer_index))
                .then(a.id.cmp(&b.id))
        });
        json!(locations)
    }

    /// Waits (at most 2 s) until NATS has what was published.
    pub async fn flush(&self) {
        // While NATS is down the publish is buffered by the client and flush would wait for the
        // reconnect; tests that stop NATS do not need it to return.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.publisher.flush()).await;
    }
}

/// A storage location record with plausible values.
pub fn location(
    scene: &str,
    id: &str,
    area: &str,
    station: &str,
    layer_index: i64,
) -> StorageLocation {
    StorageLocation {
        operate_point_id: Some(format!("AP-{station}")),
        storage_location_name: Some(format!("{station}-{layer_index}")),
        area_name: Some(format!("库区{area}")),
        goods_content: Some(String::new()),
        last_access_at: Some("2025-06-11T12:00:00.000Z".into()),
        max_weight: Some(5000),
        max_volume: Some(1000),
        layer_height: Some(100),
        tags: Some(String::new()),
        created_at: Some("2025-06-11T12:00:00.000Z".into()),
        updated_at: Some("2025-06-11T12:00:00.000Z".into()),
        ..StorageLocation::new(scene, id, area, station, layer_index)
    }
}

/// A status as the API shows it after `location` changed.
pub fn status_of(location: &StorageLocation) -> LocationStatus {
    location.status()
}

//! The owning service inside the benchmark: publishes stamped events through the real SDK and
//! answers the hub's snapshot requests through it, counting them per key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::time::{Instant, MissedTickBehavior};
use vwed_publisher::{
    timestamp_now, Publisher, SceneChange, SceneEvent, SceneSnapshot, SnapshotResponder,
    StatusAction, StorageLocation, TaskChange, TaskEvent, TaskResult, TaskSnapshot, TaskStatus,
};

/// The owner's state: what a snapshot returns, with the rev of the last event it reflects.
#[derive(Default)]
struct State {
    /// Task key → (rev, result list). Events replace the list with their one result, so that
    /// the hub's view of a task stays one result long however long the run.
    tasks: HashMap<String, (u64, Vec<TaskResult>)>,
    /// Scene key → (rev, locations).
    scenes: HashMap<String, (u64, Vec<StorageLocation>)>,
    /// Snapshot requests received, per key.
    requests: HashMap<String, u64>,
}

/// The owner service.
pub struct Owner {
    /// Publishes events and answers snapshots.
    publisher: Publisher,
    /// Read by the snapshot handlers, written by the publishing loop.
    state: Arc<Mutex<State>>,
    /// Keep answering while the owner lives.
    _responders: Vec<SnapshotResponder>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock would be a bug here; the data stays usable regardless.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Owner {
    /// Connects to NATS and starts answering snapshot requests.
    pub async fn start(nats_url: &str) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .client_capacity(65_536)
            .connect(nats_url)
            .await
            .with_context(|| format!("connecting the owner to {nats_url}"))?;
        let publisher = Publisher::new(client);
        let state: Arc<Mutex<State>> = Arc::default();
        let tasks = {
            let state = state.clone();
            publisher
                .serve_task_snapshots(move |id: String| {
                    let state = state.clone();
                    async move {
                        let mut state = lock(&state);
                        *state.requests.entry(id.clone()).or_default() += 1;
                        let snapshot = state.tasks.get(&id).map(|(rev, results)| TaskSnapshot {
                            task_record_id: id.clone(),
                            rev: *rev,
                            results: results.clone(),
                        });
                        Ok::<_, std::convert::Infallible>(snapshot)
                    }
                })
                .await?
        };
        let scenes = {
            let state = state.clone();
            publisher
                .serve_scene_snapshots(move |id: String| {
                    let state = state.clone();
                    async move {
                        let mut state = lock(&state);
                        *state.requests.entry(id.clone()).or_default() += 1;
                        let snapshot =
                            state.scenes.get(&id).map(|(rev, locations)| SceneSnapshot {
                                scene_id: id.clone(),
                                rev: *rev,
                                storage_locations: locations.clone(),
                            });
                        Ok::<_, std::convert::Infallible>(snapshot)
                    }
                })
                .await?
        };
        publisher.flush().await?;
        Ok(Self {
            publisher,
            state,
            _responders: vec![tasks, scenes],
        })
    }

    /// Creates task `key` with one unstamped result, so that its first state is small and
    /// counts as no delivery.
    pub fn seed_task(&self, key: &str) {
        let rev = self.publisher.next_rev();
        let result = TaskResult::now("seed", TaskStatus::Running);
        lock(&self.state)
            .tasks
            .insert(key.to_owned(), (rev, vec![result]));
    }

    /// Creates scene `key` with `locations`.
    pub fn seed_scene(&self, key: &str, locations: Vec<StorageLocation>) {
        let rev = self.publisher.next_rev();
        lock(&self.state)
            .scenes
            .insert(key.to_owned(), (rev, locations));
    }

    /// Snapshot requests per key so far.
    pub fn snapshot_requests(&self) -> HashMap<String, u64> {
        lock(&self.state).requests.clone()
    }

    /// The payload of the next event of task `key`: its one result, stamped now, and with
    /// `padding` > 0 a second result whose context is that many bytes, to make events larger.
    pub fn task_event(&self, key: &str, round: u32, seq: u64, padding: usize) -> TaskEvent {
        let mut results = vec![TaskResult::now(
            crate::stamp::make(round, seq),
            TaskStatus::Running,
        )];
        if padding > 0 {
            results.push(TaskResult::now(filler(padding), TaskStatus::Running));
        }
        let rev = self.publisher.next_rev();
        let mut state = lock(&self.state);
        let entry = state.tasks.entry(key.to_owned()).or_default();
        *entry = (rev, results.clone());
        TaskEvent {
            task_record_id: key.to_owned(),
            rev,
            prev_rev: None,
            change: TaskChange::Replace { results },
        }
    }

    /// The next status change of location `index` of scene `key`: occupied flips, and the goods
    /// description carries the stamp.
    pub fn status_event(
        &self,
        key: &str,
        index: usize,
        round: u32,
        seq: u64,
    ) -> Option<SceneEvent> {
        let rev = self.publisher.next_rev();
        let mut state = lock(&self.state);
        let (scene_rev, locations) = state.scenes.get_mut(key)?;
        let location = locations.get_mut(index)?;
        location.is_occupied = !location.is_occupied;
        location.goods_content = Some(crate::stamp::make(round, seq));
        location.updated_at = Some(timestamp_now());
        *scene_rev = rev;
        let action = if location.is_occupied {
            StatusAction::Occupy
        } else {
            StatusAction::Release
        };
        Some(SceneEvent {
            scene_id: key.to_owned(),
            rev,
            prev_rev: None,
            change: SceneChange::StatusChange {
                layer_name: location.layer_name.clone(),
                action,
                timestamp: timestamp_now(),
                new_status: location.status(),
            },
        })
    }

    /// Publishes a task event.
    pub async fn publish_task(&self, event: &TaskEvent) -> anyhow::Result<()> {
        Ok(self.publisher.publish_task(event).await?)
    }

    /// Publishes a scene event.
    pub async fn publish_scene(&self, event: &SceneEvent) -> anyhow::Result<()> {
        Ok(self.publisher.publish_scene(event).await?)
    }

    /// Waits until everything published has reached the NATS server.
    pub async fn flush(&self) -> anyhow::Result<()> {
        Ok(self.publisher.flush().await?)
    }
}

/// Hands out how many events are due, at a fixed rate, tick by tick (several per tick at high
/// rates), so that the offered load is the same whatever the publishing costs.
pub struct Pacer {
    /// Events per second.
    rate: f64,
    /// When publishing began.
    start: Instant,
    /// When it ends.
    end: Instant,
    /// Events handed out so far.
    issued: u64,
    /// The tick.
    ticker: tokio::time::Interval,
}

/// How often the pacer hands out a batch.
const TICK: Duration = Duration::from_millis(5);

impl Pacer {
    /// `rate` events per second for `duration`.
    pub fn new(rate: f64, duration: Duration) -> Self {
        let start = Instant::now();
        let mut ticker = tokio::time::interval_at(start, TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            rate,
            start,
            end: start + duration,
            issued: 0,
            ticker,
        }
    }

    /// Waits for the next tick and says how many events are due now; `None` once the time is up
    /// (then exactly `rate × duration` events have been handed out).
    pub async fn next_batch(&mut self) -> Option<u64> {
        if self.issued >= self.total() && Instant::now() >= self.end {
            return None;
        }
        self.ticker.tick().await;
        let now = Instant::now().min(self.end);
        let due = ((now - self.start).as_secs_f64() * self.rate).floor() as u64;
        let due = if now >= self.end {
            self.total()
        } else {
            due.min(self.total())
        };
        let batch = due.saturating_sub(self.issued);
        self.issued = due.max(self.issued);
        Some(batch)
    }

    /// Events over the whole duration.
    pub fn total(&self) -> u64 {
        ((self.end - self.start).as_secs_f64() * self.rate).floor() as u64
    }

    /// How long publishing actually took so far.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// `length` bytes of text about as varied as a scene's JSON (ids, names, numbers, a little
/// Chinese), so that padded events compress as storage states do (about tenfold), where one
/// letter repeated would shrink a thousandfold and flatter every compressor.
fn filler(length: usize) -> String {
    let mut text = String::with_capacity(length + 64);
    let mut random = fastrand::Rng::with_seed(length as u64);
    let mut n = 0;
    while text.len() < length {
        text.push_str(&format!(
            "{{\"id\":\"LOC-{n:05}\",\"layer_name\":\"A-{:02}-{}\",\"goods_weight\":{},\"is_occupied\":{},\"goods_content\":\"托盘{}\"}},",
            random.u32(..40),
            random.u32(1..6),
            random.u32(..5000),
            random.bool(),
            random.u32(..1000),
        ));
        n += 1;
    }
    // Cut at a character boundary.
    let mut cut = length;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

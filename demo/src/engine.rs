//! The thin async shell around the simulation: one mutex over all demo state, the loops that
//! drive tasks and background changes, publishing, and the snapshot handlers.
//!
//! The rule the hub depends on: a key's state and its rev change together. Every change takes
//! the mutex, mutates the state, publishes the event (the SDK takes the rev while publishing
//! and returns it) and stores that rev beside the state before the mutex is released; the
//! snapshot handlers read state and rev under the same mutex. So a snapshot's rev is always the
//! rev of the last event its state reflects, and each key's events go out in rev order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fastrand::Rng;
use tokio::sync::Mutex;
use vwed_publisher::{
    timestamp_now, Publisher, SceneSnapshot, SnapshotResponder, TaskResult, TaskSnapshot,
};

use crate::background::next_change;
use crate::scenes::{seed_scene, SceneOp, SceneState};
use crate::tasks::{Step, TaskIds, TaskRun};
use crate::DemoConfig;

/// Finished tasks kept answerable by snapshot; older ones are forgotten (their snapshot
/// answers "not found"), so a long-running demo does not grow without bound.
const KEPT_FINISHED_TASKS: usize = 200;

/// How far the background schedule may fall behind (e.g. while a publish waits for NATS)
/// before it skips ahead instead of bursting to catch up.
const MAX_BACKGROUND_LAG: Duration = Duration::from_secs(1);

/// A value with the rev of the last event it reflects.
#[derive(Debug)]
struct Versioned<T> {
    /// The rev a snapshot of `value` carries.
    rev: u64,
    /// The state.
    value: T,
}

/// Everything the demo owns, behind one mutex (see the module docs for why one).
#[derive(Debug)]
struct World {
    /// The scenes, in the order of [`Demo::scene_ids`](crate::Demo::scene_ids).
    scenes: Vec<Versioned<SceneState>>,
    /// Result lists of running and recently finished tasks, by task record id.
    tasks: HashMap<String, Versioned<Vec<TaskResult>>>,
    /// Running task ids, oldest first, for [`Demo::running_tasks`](crate::Demo::running_tasks).
    running: Vec<String>,
    /// Finished task ids, oldest first, to forget the oldest past [`KEPT_FINISHED_TASKS`].
    finished: VecDeque<String>,
    /// Hands out task record ids.
    ids: TaskIds,
}

impl World {
    /// Moves a task from the running to the finished ones, forgetting the oldest finished
    /// ones past [`KEPT_FINISHED_TASKS`].
    fn finish(&mut self, task_record_id: &str) {
        self.running.retain(|id| id != task_record_id);
        self.finished.push_back(task_record_id.to_owned());
        while self.finished.len() > KEPT_FINISHED_TASKS {
            if let Some(old) = self.finished.pop_front() {
                self.tasks.remove(&old);
            }
        }
    }
}

/// The simulation's shared core: the state and the publisher it changes it through.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Where events go and snapshot requests come from.
    publisher: Publisher,
    /// The demo's state, with each key's rev.
    world: Mutex<World>,
    /// Keeps publish failures from flooding the log while NATS is away.
    failures: FailureLog,
}

impl Engine {
    /// Seeds `config.scenes` scenes and publishes each as one upsert, so that a hub still
    /// holding a previous run's records of the same scene gets the current ones.
    pub(crate) async fn seed(publisher: Publisher, config: &DemoConfig) -> Arc<Self> {
        let now = SystemTime::now();
        let engine = Arc::new(Self {
            publisher,
            world: Mutex::new(World {
                scenes: Vec::new(),
                tasks: HashMap::new(),
                running: Vec::new(),
                finished: VecDeque::new(),
                ids: TaskIds::new(),
            }),
            failures: FailureLog::default(),
        });
        let mut world = engine.world.lock().await;
        for index in 0..config.scenes {
            let state = seed_scene(index, now);
            let records = state.locations.clone();
            let published = engine
                .publisher
                .upsert_locations(&state.scene_id, records)
                .await;
            let rev = engine.settle(&state.scene_id, published);
            world.scenes.push(Versioned { rev, value: state });
        }
        drop(world);
        engine
    }

    /// Starts answering the hub's task and scene snapshot requests from this engine's state.
    pub(crate) async fn serve_snapshots(
        self: &Arc<Self>,
    ) -> Result<Vec<SnapshotResponder>, vwed_publisher::Error> {
        let engine = self.clone();
        let tasks = self
            .publisher
            .serve_task_snapshots(move |id: String| {
                let engine = engine.clone();
                async move { Ok::<_, std::convert::Infallible>(engine.task_snapshot(id).await) }
            })
            .await?;
        let engine = self.clone();
        let scenes = self
            .publisher
            .serve_scene_snapshots(move |id: String| {
                let engine = engine.clone();
                async move { Ok::<_, std::convert::Infallible>(engine.scene_snapshot(id).await) }
            })
            .await?;
        Ok(vec![tasks, scenes])
    }

    /// The task's results and their rev, read together.
    async fn task_snapshot(&self, task_record_id: String) -> Option<TaskSnapshot> {
        let world = self.world.lock().await;
        let task = world.tasks.get(&task_record_id)?;
        Some(TaskSnapshot {
            rev: task.rev,
            results: task.value.clone(),
            task_record_id,
        })
    }

    /// The scene's locations and their rev, read together.
    async fn scene_snapshot(&self, scene_id: String) -> Option<SceneSnapshot> {
        let world = self.world.lock().await;
        let scene = world.scenes.iter().find(|s| s.value.scene_id == scene_id)?;
        Some(SceneSnapshot {
            rev: scene.rev,
            storage_locations: scene.value.locations.clone(),
            scene_id,
        })
    }

    /// The scene ids, in order.
    pub(crate) async fn scene_ids(&self) -> Vec<String> {
        let world = self.world.lock().await;
        world
            .scenes
            .iter()
            .map(|s| s.value.scene_id.clone())
            .collect()
    }

    /// Ids of the running tasks, oldest first.
    pub(crate) async fn running_tasks(&self) -> Vec<String> {
        self.world.lock().await.running.clone()
    }

    /// How many locations the scene holds.
    pub(crate) async fn location_count(&self, scene_id: &str) -> Option<usize> {
        let world = self.world.lock().await;
        let scene = world.scenes.iter().find(|s| s.value.scene_id == scene_id)?;
        Some(scene.value.locations.len())
    }

    /// Creates a task in a random scene and publishes its first result.
    pub(crate) async fn begin_task(&self, rng: &mut Rng) -> TaskRun {
        let now = timestamp_now();
        let mut world = self.world.lock().await;
        let scene = rng.usize(..world.scenes.len().max(1));
        let id = world.ids.next(&now);
        let mut task = TaskRun::new(id.clone(), scene, rng);
        world.running.push(id.clone());
        tracing::debug!(task = %id, scene = %scene_name(&world, scene), "task started");
        self.advance(&mut world, &mut task, rng, &now).await;
        task
    }

    /// Performs the task's next step and publishes what it changed.
    pub(crate) async fn step_task(&self, task: &mut TaskRun, rng: &mut Rng) {
        let now = timestamp_now();
        let mut world = self.world.lock().await;
        self.advance(&mut world, task, rng, &now).await;
    }

    /// One step of `task` under the caller's lock: the scene changes first (a lock is taken
    /// before the result that says so), then the result.
    async fn advance(&self, world: &mut World, task: &mut TaskRun, rng: &mut Rng, now: &str) {
        let World { scenes, tasks, .. } = &mut *world;
        let Some(scene) = scenes.get_mut(task.scene) else {
            return;
        };
        let Some(step) = task.advance(&mut scene.value, rng, now) else {
            return;
        };
        let is_final = step.is_final();
        let Step { result, scene_ops } = step;
        let status = result.status;
        self.publish_scene_ops(scene, scene_ops).await;

        let entry = tasks.entry(task.id.clone()).or_insert(Versioned {
            rev: 0,
            value: Vec::new(),
        });
        entry.value.push(result.clone());
        let index = entry.value.len() as u64 - 1;
        let published = self
            .publisher
            .append_task_results(&task.id, index, vec![result])
            .await;
        entry.rev = self.settle(&task.id, published);

        if is_final {
            tracing::debug!(task = %task.id, ?status, "task ended");
            world.finish(&task.id);
        }
    }

    /// Applies one background change to a random scene and publishes it.
    pub(crate) async fn background_change(&self, rng: &mut Rng) {
        let now = timestamp_now();
        let mut world = self.world.lock().await;
        let count = world.scenes.len();
        let Some(scene) = world.scenes.get_mut(rng.usize(..count.max(1))) else {
            return;
        };
        let ops = next_change(&mut scene.value, rng, &now);
        self.publish_scene_ops(scene, ops).await;
    }

    /// Publishes a scene's changes in order, leaving the rev of the last one beside the state.
    async fn publish_scene_ops(&self, scene: &mut Versioned<SceneState>, ops: Vec<SceneOp>) {
        for op in ops {
            let scene_id = &scene.value.scene_id;
            let published = match op {
                SceneOp::Status {
                    layer_name,
                    action,
                    status,
                } => {
                    self.publisher
                        .status_change(scene_id, &layer_name, action, status)
                        .await
                }
                SceneOp::Upsert(records) => {
                    self.publisher.upsert_locations(scene_id, records).await
                }
            };
            scene.rev = self.settle(scene_id, published);
        }
    }

    /// The rev to store beside a state just changed: the published event's, or when the
    /// publish failed a fresh one. The state changed either way (it is the truth; events only
    /// tell of it), and a rev above every rev sent so far makes a hub that snapshots later
    /// take this state over anything it applied. A hub that missed the event notices the gap
    /// (a task append past its end) or resynchronises after its reconnect.
    fn settle(&self, key: &str, published: Result<u64, vwed_publisher::Error>) -> u64 {
        match published {
            Ok(rev) => {
                self.failures.succeeded();
                rev
            }
            Err(error) => {
                self.failures.failed(key, &error);
                self.publisher.next_rev()
            }
        }
    }
}

/// The scene's id, for logs.
fn scene_name(world: &World, index: usize) -> &str {
    world
        .scenes
        .get(index)
        .map(|s| s.value.scene_id.as_str())
        .unwrap_or_default()
}

/// Runs one task slot for ever: a task step by step, a short pause, the next task.
pub(crate) async fn run_task_slot(
    engine: Arc<Engine>,
    mut task: TaskRun,
    step_interval: Duration,
    mut rng: Rng,
) {
    loop {
        while !task.is_done() {
            tokio::time::sleep(jitter(step_interval, &mut rng)).await;
            engine.step_task(&mut task, &mut rng).await;
        }
        tokio::time::sleep(jitter(step_interval, &mut rng)).await;
        task = engine.begin_task(&mut rng).await;
    }
}

/// Makes background changes at `per_second` on average, for ever. It keeps a schedule rather
/// than sleeping a fixed time after each change, so the time a change takes does not lower
/// the rate (which matters at high rates).
pub(crate) async fn run_background(engine: Arc<Engine>, per_second: f64, mut rng: Rng) {
    // At least one change a quarter of an hour, so the pause stays a sane duration however
    // small a rate the caller gave.
    let mean = Duration::from_secs_f64(1.0 / per_second.max(1.0 / 900.0));
    let mut due = Instant::now();
    loop {
        due += jitter(mean, &mut rng);
        let now = Instant::now();
        if due + MAX_BACKGROUND_LAG < now {
            due = now;
        }
        tokio::time::sleep_until(due.into()).await;
        engine.background_change(&mut rng).await;
    }
}

/// `mean` scaled by a random factor in [0.5, 1.5), so events do not tick like a clock.
fn jitter(mean: Duration, rng: &mut Rng) -> Duration {
    mean.mul_f64(0.5 + rng.f64())
}

/// Rate-limits publish failure warnings: the first failure warns, then at most one warning
/// every [`FailureLog::EVERY`] with the count since, and the first success after says so.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failures not yet reported, and when the last warning went out.
    state: std::sync::Mutex<(u64, Option<Instant>)>,
}

impl FailureLog {
    /// The least time between two warnings.
    const EVERY: Duration = Duration::from_secs(10);

    fn failed(&self, key: &str, error: &vwed_publisher::Error) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (unreported, last_warning) = &mut *state;
        *unreported += 1;
        if last_warning.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            tracing::warn!(%key, %error, failures = *unreported, "could not publish; the simulation carries on");
            *unreported = 0;
            *last_warning = Some(Instant::now());
        } else {
            tracing::debug!(%key, %error, "could not publish");
        }
    }

    fn succeeded(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.1.is_some() {
            tracing::info!(unreported = state.0, "publishing works again");
            *state = (0, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use vwed_publisher::{SnapshotReply, TaskStatus};

    use super::*;
    use crate::Demo;

    /// A publisher whose client never connects (nothing listens on port 1): events wait in
    /// the client's buffer, so the simulation runs as it does while NATS is away, and the
    /// test needs no server.
    async fn offline_publisher() -> Publisher {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a client that connects later");
        Publisher::new(client)
    }

    #[tokio::test]
    async fn a_running_demo_keeps_tasks_locks_and_snapshots_consistent() {
        let config = DemoConfig {
            scenes: 4,
            status_changes_per_second: 200.0,
            concurrent_tasks: 5,
            step_interval: Duration::from_millis(20),
        };
        let demo = Demo::start(offline_publisher().await, config)
            .await
            .expect("the demo starts");
        assert_eq!(
            demo.scene_ids(),
            [
                "warehouse-north",
                "warehouse-south",
                "cold-store",
                "warehouse-4"
            ]
        );
        assert_eq!(
            demo.running_tasks().await.len(),
            5,
            "tasks run from the start"
        );
        for scene in demo.scene_ids() {
            let count = demo.location_count(&scene).await.expect("a known scene");
            assert!((200..=500).contains(&count), "{scene}: {count}");
        }
        assert_eq!(demo.location_count("nowhere").await, None);

        tokio::time::sleep(Duration::from_millis(800)).await;
        {
            let world = demo.engine.world.lock().await;
            // A slot pauses briefly between two tasks, so one may be between tasks now.
            assert!(world.running.len() <= 5);
            assert!(!world.finished.is_empty(), "tasks finish");
            assert!(world.tasks.len() > 5, "finished tasks are replaced");
            // Task locks belong to running tasks, two each (source and destination).
            let mut locks: HashMap<&str, usize> = HashMap::new();
            for scene in &world.scenes {
                for holder in scene
                    .value
                    .locations
                    .iter()
                    .filter_map(|l| l.locked_by.as_deref())
                {
                    if holder.starts_with("TR-") {
                        *locks.entry(holder).or_default() += 1;
                    }
                }
            }
            for (holder, count) in &locks {
                assert!(world.running.iter().any(|id| id == holder), "{holder}");
                assert_eq!(*count, 2, "{holder}");
            }
            for id in &world.finished {
                let task = &world.tasks[id];
                let last = task.value.last().expect("results");
                assert_ne!(last.status, TaskStatus::Running, "{id}");
            }
            for id in &world.running {
                let task = &world.tasks[id];
                assert!(task.value.iter().all(|r| r.status == TaskStatus::Running));
            }
        }

        let running = demo.running_tasks().await;
        let snapshot = demo
            .engine
            .task_snapshot(running[0].clone())
            .await
            .expect("a running task");
        assert!(snapshot.results[0].context.starts_with("[任务开始]"));
        assert!(snapshot.rev > 0);
        assert_eq!(demo.engine.task_snapshot("TR-nope".into()).await, None);
        assert_eq!(demo.engine.scene_snapshot("nowhere".into()).await, None);

        let engine = demo.engine.clone();
        demo.stop();
        let before = engine
            .scene_snapshot("cold-store".into())
            .await
            .expect("known");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = engine
            .scene_snapshot("cold-store".into())
            .await
            .expect("known");
        assert_eq!(before, after, "a stopped demo changes nothing");
    }

    #[tokio::test]
    async fn scene_snapshots_fit_in_one_nats_message() {
        // NATS refuses messages over its max_payload (1 MiB by default); the seed upsert and
        // every snapshot reply carry a whole scene.
        let config = DemoConfig {
            scenes: 6,
            concurrent_tasks: 0,
            status_changes_per_second: 0.0,
            ..DemoConfig::default()
        };
        let demo = Demo::start(offline_publisher().await, config)
            .await
            .expect("the demo starts");
        assert!(demo.running_tasks().await.is_empty());
        for scene in demo.scene_ids() {
            let snapshot = demo
                .engine
                .scene_snapshot(scene.clone())
                .await
                .expect("known");
            let bytes = SnapshotReply::Found(snapshot)
                .to_json()
                .expect("json")
                .len();
            assert!(bytes < 1024 * 1024 / 2, "{scene}: {bytes} bytes");
        }
    }

    #[test]
    fn only_the_latest_finished_tasks_are_kept() {
        let mut world = World {
            scenes: Vec::new(),
            tasks: HashMap::new(),
            running: Vec::new(),
            finished: VecDeque::new(),
            ids: TaskIds::new(),
        };
        let ids: Vec<String> = (0..KEPT_FINISHED_TASKS + 10)
            .map(|n| format!("TR-20250611-{n:06}"))
            .collect();
        for id in &ids {
            world.running.push(id.clone());
            world.tasks.insert(
                id.clone(),
                Versioned {
                    rev: 1,
                    value: Vec::new(),
                },
            );
        }
        for id in &ids {
            world.finish(id);
        }
        assert!(world.running.is_empty());
        assert_eq!(world.tasks.len(), KEPT_FINISHED_TASKS);
        assert!(!world.tasks.contains_key(&ids[9]));
        assert!(world.tasks.contains_key(&ids[10]));
    }
}

//! # vwed-demo
//!
//! Simulated task engines and storage services, so that a hub shows live, realistic data with
//! no real warehouse behind it. The hub runs this for its `--demo` flag; the `vwed-demo` binary
//! runs the same simulation against a real NATS server.
//!
//! The simulation owns a few scenes (`warehouse-north`, `warehouse-south`, `cold-store`, ...),
//! each with a few hundred storage locations laid out as areas, stations and layers, and:
//!
//! * changes location statuses in the background (occupy, release, lock, unlock, disable,
//!   enable, empty trays), each change possible in the current state;
//! * keeps a number of transport tasks running: each locks a source holding goods and a free
//!   destination (`locked_by` = its task record id), appends a result per step, and ends in
//!   `SUCCESS` (goods moved) or `FAILED`, unlocking both either way;
//! * answers the hub's task and scene snapshot requests from the same state.
//!
//! Everything goes through the [`vwed_publisher::Publisher`] it is given, exactly as a real
//! service would, with each key's state and rev changed together under one lock so that
//! snapshots and events merge exactly in the hub.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let publisher = vwed_publisher::Publisher::new(client);
//! let demo = vwed_demo::Demo::start(publisher, vwed_demo::DemoConfig::default()).await?;
//! println!("watch {:?}, e.g. task {:?}", demo.scene_ids(), demo.running_tasks().await);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod background;
mod engine;
mod scenes;
mod tasks;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use vwed_publisher::{Publisher, SnapshotResponder};

use crate::engine::Engine;

/// The shortest step interval the demo runs with, so that a zero from a flag cannot turn
/// the task loops into busy loops.
const MIN_STEP_INTERVAL: Duration = Duration::from_millis(10);

/// How big and how busy the simulation is.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// How many scenes to simulate (at least one is). The first three are `warehouse-north`,
    /// `warehouse-south` and `cold-store`; more are `warehouse-4`, `warehouse-5`, ... Each has
    /// 200 to 500 storage locations.
    pub scenes: usize,
    /// Background status changes per second across all scenes, besides those tasks make; they
    /// keep the storage pages moving even between task steps. Zero (or a negative or not
    /// finite value) turns them off.
    pub status_changes_per_second: f64,
    /// How many tasks run at any time; when one ends another starts after a short pause, so
    /// there is always a task to watch. Zero runs none.
    pub concurrent_tasks: usize,
    /// Mean time between two results of one task (each wait is jittered ±50% so tasks do not
    /// step in lockstep); it sets how fast a watched task's page fills.
    pub step_interval: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            scenes: 3,
            status_changes_per_second: 4.0,
            concurrent_tasks: 4,
            step_interval: Duration::from_millis(1500),
        }
    }
}

/// A running demo; stops (aborts its tasks, stops answering snapshots) when dropped.
pub struct Demo {
    /// The simulation's state, kept for the accessors below.
    engine: Arc<Engine>,
    /// The scene ids, fixed at start, so [`Demo::scene_ids`] need not wait for the state lock.
    scene_ids: Vec<String>,
    /// The task slots and the background loop; aborted on drop.
    loops: Vec<JoinHandle<()>>,
    /// The snapshot responders; they stop serving when dropped with the demo.
    _responders: Vec<SnapshotResponder>,
}

impl Demo {
    /// Seeds the scenes and starts the simulation: publishes through `publisher` and answers
    /// the hub's task and scene snapshot requests through it
    /// ([`Publisher::serve_task_snapshots`] / [`Publisher::serve_scene_snapshots`]).
    ///
    /// Fails only when the snapshot responders cannot subscribe. Publish failures (e.g. NATS
    /// down) are logged and the simulation carries on; hubs catch up through snapshots.
    pub async fn start(
        publisher: Publisher,
        config: DemoConfig,
    ) -> Result<Demo, vwed_publisher::Error> {
        let config = DemoConfig {
            scenes: config.scenes.max(1),
            step_interval: config.step_interval.max(MIN_STEP_INTERVAL),
            ..config
        };
        let engine = Engine::seed(publisher, &config).await;
        let responders = engine.serve_snapshots().await?;
        let scene_ids = engine.scene_ids().await;

        let mut loops = Vec::new();
        for _ in 0..config.concurrent_tasks {
            let mut rng = fastrand::Rng::new();
            // The first task starts before `start` returns, so callers can point at a running
            // task at once.
            let task = engine.begin_task(&mut rng).await;
            loops.push(tokio::spawn(engine::run_task_slot(
                engine.clone(),
                task,
                config.step_interval,
                rng,
            )));
        }
        let rate = config.status_changes_per_second;
        if rate.is_finite() && rate > 0.0 {
            loops.push(tokio::spawn(engine::run_background(
                engine.clone(),
                rate,
                fastrand::Rng::new(),
            )));
        }
        tracing::debug!(scenes = ?scene_ids, tasks = config.concurrent_tasks, "demo started");
        Ok(Demo {
            engine,
            scene_ids,
            loops,
            _responders: responders,
        })
    }

    /// The scene ids, in order.
    pub fn scene_ids(&self) -> Vec<String> {
        self.scene_ids.clone()
    }

    /// Ids of tasks running right now (a few, oldest first), so a log line or a test can
    /// point at one.
    pub async fn running_tasks(&self) -> Vec<String> {
        self.engine.running_tasks().await
    }

    /// How many storage locations the scene holds right now (None if unknown scene).
    pub async fn location_count(&self, scene_id: &str) -> Option<usize> {
        self.engine.location_count(scene_id).await
    }

    /// Stops the simulation.
    pub fn stop(self) {}
}

impl Drop for Demo {
    fn drop(&mut self) {
        for handle in &self.loops {
            handle.abort();
        }
    }
}

impl fmt::Debug for Demo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Demo")
            .field("scene_ids", &self.scene_ids)
            .field("loops", &self.loops.len())
            .finish_non_exhaustive()
    }
}

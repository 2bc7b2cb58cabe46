//! # vwed-publisher
//!
//! The library that VWED task engines and storage services use to feed the realtime hub:
//!
//! * **publish change events**: task results (`SUCCESS` / `FAILED` / `RUNNING`) and storage
//!   location changes (status changes, full-record upserts, removals), each on its key's subject;
//! * **answer snapshot requests**: when a hub needs the current state of a task or a scene, it asks
//!   over NATS request/reply and a handler you supply answers, in a queue group shared by all
//!   replicas of your service.
//!
//! The [`wire`] types and the [`subject`] mapping are the contract itself; the hub uses these same
//! definitions, so the two sides cannot disagree.
//!
//! ## Revs
//!
//! Every event carries a `rev`, strictly increasing per key. The hub applies an event only when
//! its rev is above the state it holds, so a snapshot and the events racing it merge exactly. A
//! snapshot's rev must be the rev of the last event its state reflects: **read the state and its
//! rev together**, e.g. keep the rev in a column beside the state and update both in the
//! transaction that makes the change, then publish the event with that rev once it commits:
//!
//! ```text
//! BEGIN;
//!   UPDATE storage_location SET is_occupied = true, rev = $rev WHERE id = $id;
//!   UPDATE scene SET rev = $rev WHERE id = $scene;
//! COMMIT;
//! publisher.publish_scene(&SceneEvent { scene_id, rev, prev_rev: None, change }).await?;
//! -- snapshot handler: SELECT rev, locations FROM ... in one transaction
//! ```
//!
//! [`Publisher::next_rev`] hands out revs from a [`HybridClock`] (wall-clock microseconds, bumped
//! when needed), which keeps increasing across restarts. A service with its own row versions
//! publishes those instead with [`Publisher::publish_task`] / [`Publisher::publish_scene`].
//!
//! Publish each key's events in rev order: the hub drops an event whose rev is not above the last
//! one it saw for that key. The convenience methods (`append_task_results`, `status_change`, ...)
//! take the rev and hand the event to the connection under one lock, so concurrent calls on one
//! publisher stay in order. Across processes, let one instance own a key at a time (as a task
//! engine owns its tasks), or take revs from the store that orders the writes.
//!
//! ## Tips
//!
//! Core NATS delivers at most once: an event can be lost when a NATS node dies or a route
//! breaks, and no hub would notice. So a publisher tips every key it published in the last
//! minute, every 5 seconds and at once after its NATS connection comes back: a tip names the
//! key's latest rev, and a hub holding less takes a fresh snapshot. [`Publisher::with_tips`]
//! changes the interval and the window; the tip task ends when the last clone of the
//! publisher is dropped. See [`tips`].
//!
//! ## Without NATS
//!
//! [`Publisher::in_process`] publishes on a [`MemoryBus`] instead: an in-process stand-in for a
//! NATS server with the same semantics for what the SDK and the hub use. The hub runs on one when
//! started without `--nats-url` (its `--demo` publishes there), and a service's own tests can use
//! one to run without a server.
//!
//! ## Secured NATS
//!
//! A server that wants credentials (user and password, token, nkey, `.creds`) or TLS (a private
//! CA, client certificates) is reached by applying a [`NatsSecurity`] to the connect options; the
//! hub and the demo take the same settings from their `--nats-*` flags. See [`security`].
//!
//! Those flags are `NatsFlags`, behind the `cli` feature (which brings clap): a publisher's own
//! binary flattens it into its clap arguments (`#[command(flatten)] nats: NatsFlags`) to take
//! the same flags and `VWED_NATS_*` environment variables as the hub.
//!
//! ## Example
//!
//! A task engine that appends a result and answers snapshots from its in-memory state
//! (run `nats-server` first):
//!
//! ```no_run
//! use std::{collections::HashMap, sync::Arc};
//! use tokio::sync::Mutex;
//! use vwed_publisher::{Publisher, TaskResult, TaskSnapshot, TaskStatus};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//!     let publisher = Publisher::new(client);
//!
//!     // State and rev live together, so a snapshot always matches its rev.
//!     let tasks: Arc<Mutex<HashMap<String, (u64, Vec<TaskResult>)>>> = Default::default();
//!
//!     let state = tasks.clone();
//!     let _responder = publisher
//!         .serve_task_snapshots(move |id: String| {
//!             let state = state.clone();
//!             async move {
//!                 let tasks = state.lock().await;
//!                 Ok::<_, std::convert::Infallible>(tasks.get(&id).map(|(rev, results)| {
//!                     TaskSnapshot { task_record_id: id, rev: *rev, results: results.clone() }
//!                 }))
//!             }
//!         })
//!         .await?;
//!
//!     // Change the state and publish the change under one lock, with one rev.
//!     let result = TaskResult::now("[取货] 开始", TaskStatus::Running);
//!     let mut guard = tasks.lock().await;
//!     let (rev, results) = guard.entry("t-1".to_owned()).or_default();
//!     *rev = publisher.next_rev();
//!     results.push(result.clone());
//!     let event = vwed_publisher::TaskEvent {
//!         task_record_id: "t-1".into(),
//!         rev: *rev,
//!         prev_rev: None,
//!         change: vwed_publisher::TaskChange::Append {
//!             index: (results.len() - 1) as u64,
//!             results: vec![result],
//!         },
//!     };
//!     publisher.publish_task(&event).await?;
//!     drop(guard);
//!     publisher.flush().await?;
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]

#[cfg(feature = "cli")]
mod flags;
mod link;
pub mod memory;
mod publisher;
mod responder;
pub mod rev;
pub mod security;
pub mod subject;
pub mod tips;
#[cfg(test)]
mod vectors_test;
pub mod wire;

#[cfg(feature = "cli")]
pub use flags::NatsFlags;
pub use memory::MemoryBus;
pub use publisher::Publisher;
pub use responder::SnapshotResponder;
pub use rev::HybridClock;
pub use security::{NatsSecurity, SecurityError};
pub use subject::{decode_key, encode_key, validate_id, InvalidId, Subjects, MAX_ID_BYTES};
pub use wire::{
    timestamp_now, LocationStatus, SceneChange, SceneEvent, SceneSnapshot, SceneTip, SnapshotReply,
    StatusAction, StorageLocation, TaskChange, TaskEvent, TaskResult, TaskSnapshot, TaskStatus,
    TaskTip,
};

/// What can go wrong while publishing or serving snapshots.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task record id or scene id is not valid (SPEC section 2.3: empty, over
    /// [`MAX_ID_BYTES`], or holding a control character); nothing was sent, since no client
    /// could ever watch that key.
    #[error("invalid id: {0}")]
    InvalidId(#[source] InvalidId),
    /// The event's `prev_rev` is not below its `rev`; nothing was sent, since every hub would
    /// refuse it.
    #[error("invalid event: {0}")]
    InvalidEvent(#[source] wire::PayloadError),
    /// A payload could not be encoded as JSON.
    #[error("could not encode the payload: {0}")]
    Encode(#[source] serde_json::Error),
    /// NATS refused or could not take the message.
    #[error("could not publish: {0}")]
    Publish(#[source] async_nats::PublishError),
    /// The responder could not subscribe to its request subject.
    #[error("could not subscribe: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The in-process bus refused the message.
    #[error("could not publish: {0}")]
    InProcess(#[source] memory::PublishError),
    /// Buffered messages could not be written to the server.
    #[error("could not flush: {0}")]
    Flush(#[source] async_nats::client::FlushError),
}

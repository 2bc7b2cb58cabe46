//! Answering the hub's snapshot requests.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::link::{Link, Request};
use crate::subject::Subjects;
use crate::wire::{Keyed, SceneSnapshot, SnapshotReply, TaskSnapshot};
use crate::{Error, Publisher};

/// Queue group shared by every replica of a service, so that each request is answered once.
const TASK_QUEUE_GROUP: &str = "vwed-snapshot-task";
const SCENE_QUEUE_GROUP: &str = "vwed-snapshot-scene";

/// How many requests one responder handles at once; more wait in the subscription.
const MAX_CONCURRENT_REQUESTS: usize = 64;

/// A running snapshot responder. It serves until it is dropped or [`stop`](Self::stop)ped.
#[must_use = "the responder stops serving when this handle is dropped"]
#[derive(Debug)]
pub struct SnapshotResponder {
    /// The serving loop; aborted on drop so that a forgotten handle does not serve forever.
    task: JoinHandle<()>,
}

impl SnapshotResponder {
    /// Stops answering requests.
    pub fn stop(self) {}

    /// Whether the serving loop ended (its subscription closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for SnapshotResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Answers task snapshot requests with `handler`, in a queue group shared by all replicas.
    ///
    /// `handler` gets the task record id and returns `Ok(Some(snapshot))`, `Ok(None)` when the
    /// task does not exist, or an error, which is logged and left unanswered so that the hub
    /// retries. The snapshot's `rev` must be the rev of the last event its state reflects.
    pub async fn serve_task_snapshots<H, Fut, E>(
        &self,
        handler: H,
    ) -> Result<SnapshotResponder, Error>
    where
        H: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<TaskSnapshot>, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let subject = self.subjects().all_task_snapshots();
        self.serve(subject, TASK_QUEUE_GROUP, handler).await
    }

    /// Answers scene snapshot requests with `handler`, in a queue group shared by all replicas.
    ///
    /// Same rules as [`serve_task_snapshots`](Self::serve_task_snapshots), with scene ids.
    pub async fn serve_scene_snapshots<H, Fut, E>(
        &self,
        handler: H,
    ) -> Result<SnapshotResponder, Error>
    where
        H: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<SceneSnapshot>, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let subject = self.subjects().all_scene_snapshots();
        self.serve(subject, SCENE_QUEUE_GROUP, handler).await
    }

    async fn serve<H, Fut, E, S>(
        &self,
        subject: String,
        queue_group: &str,
        handler: H,
    ) -> Result<SnapshotResponder, Error>
    where
        H: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<S>, E>> + Send + 'static,
        E: Display + Send + 'static,
        S: Serialize + Keyed + Send + 'static,
    {
        let requests = self.link().queue_subscribe(subject, queue_group).await?;
        let link = self.link().clone();
        let subjects = self.subjects().clone();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            requests
                .for_each_concurrent(MAX_CONCURRENT_REQUESTS, |request| {
                    answer(&link, &subjects, handler.as_ref(), request)
                })
                .await;
        });
        Ok(SnapshotResponder { task })
    }
}

async fn answer<H, Fut, E, S>(link: &Link, subjects: &Subjects, handler: &H, request: Request)
where
    H: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<S>, E>>,
    E: Display,
    S: Serialize + Keyed,
{
    let Some(reply_to) = request.reply else {
        tracing::debug!(subject = %request.subject, "snapshot request without a reply subject");
        return;
    };
    let Some(key) = subjects.snapshot_key(&request.subject) else {
        tracing::warn!(subject = %request.subject, "snapshot request for a malformed key");
        return;
    };
    let reply = match handler(key.clone()).await {
        Ok(Some(snapshot)) if snapshot.key() != key => {
            tracing::error!(%key, answered = snapshot.key(), "snapshot handler answered for another key; not sent");
            return;
        }
        Ok(Some(snapshot)) => SnapshotReply::Found(snapshot),
        Ok(None) => SnapshotReply::NotFound,
        Err(error) => {
            tracing::warn!(%key, %error, "snapshot handler failed; the hub will retry");
            return;
        }
    };
    match reply.to_json() {
        Ok(payload) => {
            if let Err(error) = link.publish(reply_to, payload.into()).await {
                tracing::warn!(%key, %error, "could not send a snapshot reply");
            }
        }
        Err(error) => tracing::error!(%key, %error, "could not encode a snapshot"),
    }
}

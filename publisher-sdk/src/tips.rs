//! Tips (SPEC section 3): every key published recently, with its latest rev, sent now and then.
//!
//! Core NATS delivers at most once, so an event can be lost on its way to a hub without anyone
//! noticing. A tip names a key's latest rev; a hub that holds less takes a fresh snapshot. The
//! bookkeeping ([`RecentKeys`]) has no I/O and no clock of its own; the publisher feeds it what
//! it published, and a task sends what it returns every tip interval and at once after a NATS
//! reconnect. The Python SDK's `tips.py` is the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::link::Link;
use crate::wire::{SceneTip, TaskTip};

/// How often a publisher tips its recent keys unless told otherwise.
pub const DEFAULT_TIP_INTERVAL: Duration = Duration::from_secs(5);
/// How long after its last event a key is still tipped unless told otherwise.
pub const DEFAULT_TIP_WINDOW: Duration = Duration::from_secs(60);

/// How often the tip task looks for a NATS reconnect, to tip every recent key at once after it.
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// One key published recently.
#[derive(Debug)]
struct Recent {
    /// Whether the key is a task record (else a scene): the tip's shape depends on it.
    is_task: bool,
    /// The task record id or scene id, written into the tip.
    id: String,
    /// The highest rev published for the key: what the tip announces.
    rev: u64,
    /// When the key was last published: tips stop one window later.
    published_at: Instant,
}

/// The keys published in the last window, with the highest rev of each.
#[derive(Debug)]
pub struct RecentKeys {
    /// How long after its last event a key is still tipped.
    window: Duration,
    /// By event subject, which is unique per key and is where the tip goes.
    keys: HashMap<String, Recent>,
}

impl RecentKeys {
    /// Remembers keys for `window` after their last event.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            keys: HashMap::new(),
        }
    }

    /// Notes that an event with `rev` went out on `subject` at `now`.
    pub fn published(&mut self, subject: &str, is_task: bool, id: &str, rev: u64, now: Instant) {
        match self.keys.get_mut(subject) {
            Some(recent) => {
                recent.rev = recent.rev.max(rev);
                recent.published_at = now;
            }
            None => {
                self.keys.insert(
                    subject.to_owned(),
                    Recent {
                        is_task,
                        id: id.to_owned(),
                        rev,
                        published_at: now,
                    },
                );
            }
        }
    }

    /// The highest rev published on `subject` within the window, if any: the `prev_rev` of the
    /// key's next event.
    pub fn last_rev(&self, subject: &str) -> Option<u64> {
        self.keys.get(subject).map(|recent| recent.rev)
    }

    /// The tips to send at `now`, as (subject, payload); forgets keys past the window.
    pub fn tips(&mut self, now: Instant) -> Vec<(String, Bytes)> {
        let window = self.window;
        self.keys
            .retain(|_, recent| now.saturating_duration_since(recent.published_at) <= window);
        self.keys
            .iter()
            .filter_map(|(subject, recent)| {
                let payload = if recent.is_task {
                    serde_json::to_vec(&TaskTip {
                        task_record_id: recent.id.clone(),
                        rev: recent.rev,
                    })
                } else {
                    serde_json::to_vec(&SceneTip {
                        scene_id: recent.id.clone(),
                        rev: recent.rev,
                    })
                };
                // A tip of a string and a number always encodes.
                payload.ok().map(|p| (subject.clone(), Bytes::from(p)))
            })
            .collect()
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A publisher's tipping: its settings, its recent keys, and whether the task runs.
#[derive(Debug)]
pub(crate) struct Tipper {
    /// Between tips; `None` turns them off.
    interval: Option<Duration>,
    /// The keys to tip. A std mutex: held for a map update, never across an await.
    recent: Mutex<RecentKeys>,
    /// Set once the tip task is spawned (by the first publish, inside the runtime).
    started: std::sync::atomic::AtomicBool,
}

impl Tipper {
    pub fn new(interval: Option<Duration>, window: Duration) -> Self {
        Self {
            interval,
            recent: Mutex::new(RecentKeys::new(window)),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Notes a published event (once the connection has it), and starts the tip task on the
    /// first one.
    pub fn published(
        self: &Arc<Self>,
        link: &Link,
        subject: &str,
        is_task: bool,
        id: &str,
        rev: u64,
    ) {
        let Some(interval) = self.interval else {
            return;
        };
        if let Ok(mut recent) = self.recent.lock() {
            recent.published(subject, is_task, id, rev, Instant::now());
        }
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tokio::spawn(tip_loop(Arc::downgrade(self), link.clone(), interval));
        }
    }

    /// The `prev_rev` an event with `rev` on `subject` should carry when its caller named none:
    /// the last rev published on the subject within the window, if below `rev`. `None` when
    /// tips are off (nothing is remembered then).
    pub fn prev_rev(&self, subject: &str, rev: u64) -> Option<u64> {
        self.interval?;
        let last = self.recent.lock().ok()?.last_rev(subject)?;
        (last < rev).then_some(last)
    }
}

/// Tips every `interval`, and at once after a reconnect; ends when the publisher is dropped.
///
/// No ordering lock is taken: a key's rev is noted only once its event was handed to the
/// connection, so each tip queues behind the event it names, and a tip that meets a newer event
/// on the way names a rev at or below the hub's, which changes nothing.
async fn tip_loop(tipper: Weak<Tipper>, link: Link, interval: Duration) {
    let mut connects = link.connects();
    let mut next_tip = Instant::now() + interval;
    // The last moment the connection was seen up: after an outage the window counts up to it,
    // however long the outage, since the last events before it are the likeliest lost.
    let mut last_connected = Instant::now();
    loop {
        let wait = RECONNECT_POLL.min(next_tip.saturating_duration_since(Instant::now()));
        tokio::time::sleep(wait).await;
        let Some(tipper) = tipper.upgrade() else {
            return;
        };
        if !link.is_connected() {
            // Tips published now would only wait in the client's buffer; the reconnect sends them.
            continue;
        }
        let now = Instant::now();
        let came_back = link.connects() != connects;
        let horizon = if came_back { last_connected } else { now };
        last_connected = now;
        if !came_back && now < next_tip {
            continue;
        }
        connects = link.connects();
        next_tip = now + interval;
        let tips = match tipper.recent.lock() {
            Ok(mut recent) => recent.tips(horizon),
            Err(_) => continue,
        };
        drop(tipper);
        if came_back {
            tracing::info!(
                keys = tips.len(),
                "NATS connection is back: tipping recent keys"
            );
        }
        for (subject, payload) in tips {
            if let Err(error) = link.publish(subject, payload).await {
                tracing::warn!(%error, "could not publish a tip; the next round tries again");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tips_name_each_keys_highest_rev_until_the_window_passes() {
        let start = Instant::now();
        let mut recent = RecentKeys::new(Duration::from_secs(60));
        recent.published("vwed.task.t-1.execution", true, "t-1", 5, start);
        recent.published("vwed.task.t-1.execution", true, "t-1", 3, start);
        recent.published("vwed.scene.s.storage", false, "s", 9, start);
        let mut tips = recent.tips(start + Duration::from_secs(5));
        tips.sort();
        assert_eq!(
            tips,
            vec![
                (
                    "vwed.scene.s.storage".to_owned(),
                    Bytes::from_static(br#"{"scene_id":"s","rev":9,"kind":"tip"}"#)
                ),
                (
                    "vwed.task.t-1.execution".to_owned(),
                    Bytes::from_static(br#"{"task_record_id":"t-1","rev":5,"op":"tip"}"#)
                ),
            ]
        );
        recent.published(
            "vwed.task.t-1.execution",
            true,
            "t-1",
            6,
            start + Duration::from_secs(30),
        );
        let later = recent.tips(start + Duration::from_secs(61));
        assert_eq!(
            later.len(),
            1,
            "the scene's window passed; the task's did not"
        );
        assert!(later[0]
            .1
            .starts_with(br#"{"task_record_id":"t-1","rev":6"#));
        assert!(recent.tips(start + Duration::from_secs(100)).is_empty());
        assert!(recent.is_empty());
    }
}

//! Tips (SPEC section 3): every key published recently, with its latest rev, sent now and then.
//!
//! Core NATS delivers at most once, so an event can be lost on its way to a hub without anyone
//! noticing. A tip names a key's latest rev; a hub that holds less takes a fresh snapshot. The
//! bookkeeping ([`RecentKeys`]) has no I/O and no clock of its own; the publisher feeds it what
//! it published, and a task sends the tips it says are due (each key once per interval, keys
//! spread over it) and every key's at once after a NATS reconnect. The Python SDK's `tips.py`
//! is the same.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
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

/// The keys published in the last window, with the highest rev of each, and when each is next
/// tipped.
///
/// Each key is tipped once per interval at a phase of its own (from a hash of its subject), not
/// all keys at once: a hub watching 10,000 keys of one publisher took the burst of 10,000 tips
/// every 5 s as a spike in its events' latency (p99 11-15 ms, max 84-125 ms, against 6.6 and
/// 22 ms without tips). A heap of tip times makes a round cost the keys due, not all keys.
#[derive(Debug)]
pub struct RecentKeys {
    /// How often each key is tipped.
    interval: Duration,
    /// How long after its last event a key is still tipped.
    window: Duration,
    /// By event subject, which is unique per key and is where the tip goes.
    keys: HashMap<Arc<str>, Recent>,
    /// When each remembered key is next tipped: exactly one entry per key in `keys`; a key
    /// past its window leaves both when its entry comes up.
    schedule: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

impl RecentKeys {
    /// Tips each key every `interval`, for `window` after its last event.
    pub fn new(interval: Duration, window: Duration) -> Self {
        Self {
            interval,
            window,
            keys: HashMap::new(),
            schedule: BinaryHeap::new(),
        }
    }

    /// Notes that an event with `rev` went out on `subject` at `now`. A key new to the list is
    /// first tipped within one interval, at its own phase.
    pub fn published(&mut self, subject: &str, is_task: bool, id: &str, rev: u64, now: Instant) {
        if let Some(recent) = self.keys.get_mut(subject) {
            recent.rev = recent.rev.max(rev);
            recent.published_at = now;
            return;
        }
        let subject: Arc<str> = Arc::from(subject);
        self.keys.insert(
            subject.clone(),
            Recent {
                is_task,
                id: id.to_owned(),
                rev,
                published_at: now,
            },
        );
        let first = now + self.phase(&subject);
        self.schedule.push(Reverse((first, subject)));
    }

    /// The highest rev published on `subject` within the window, if any: the `prev_rev` of the
    /// key's next event.
    pub fn last_rev(&self, subject: &str) -> Option<u64> {
        self.keys.get(subject).map(|recent| recent.rev)
    }

    /// The tips due at `now`, as (subject, payload): each key whose time came, once, whose time
    /// then moves to its next slot after `now` (never a burst to catch up). Keys past the
    /// window are forgotten as their time comes.
    pub fn due(&mut self, now: Instant) -> Vec<(String, Bytes)> {
        let mut tips = Vec::new();
        let mut again = Vec::new();
        while self
            .schedule
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, subject))) = self.schedule.pop() else {
                break;
            };
            let Some(recent) = self.keys.get(&subject) else {
                continue;
            };
            if now.saturating_duration_since(recent.published_at) > self.window {
                self.keys.remove(&subject);
                continue;
            }
            tips.extend(tip(&subject, recent));
            again.push(Reverse((self.next_slot(at, now), subject)));
        }
        // Put back after the loop: each key is tipped at most once per call, whatever the
        // interval.
        self.schedule.extend(again);
        tips
    }

    /// A tip for every key published within the window before `horizon` (after a reconnect:
    /// the window counts up to when the connection was lost); later tips keep their times.
    pub fn every(&mut self, horizon: Instant) -> Vec<(String, Bytes)> {
        let window = self.window;
        let before = self.keys.len();
        self.keys
            .retain(|_, recent| horizon.saturating_duration_since(recent.published_at) <= window);
        if self.keys.len() != before {
            // One entry per remembered key: a key forgotten here and published again must not
            // keep its old entry beside the new one.
            let keys = &self.keys;
            self.schedule
                .retain(|Reverse((_, subject))| keys.contains_key(subject));
        }
        self.keys
            .iter()
            .filter_map(|(subject, recent)| tip(subject, recent))
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

    /// The key's first slot after `now`, its last having been `at`: its phase kept, so that
    /// keys overdue together (a stalled loop, a long outage) do not go on in one burst.
    fn next_slot(&self, at: Instant, now: Instant) -> Instant {
        let interval = self.interval.as_nanos();
        if interval == 0 {
            return now;
        }
        let periods = now.saturating_duration_since(at).as_nanos() / interval + 1;
        at + self.interval * u32::try_from(periods).unwrap_or(u32::MAX)
    }

    /// Where in the interval `subject` is tipped: the same for the key every time, spread
    /// evenly over keys.
    fn phase(&self, subject: &str) -> Duration {
        let mut hasher = DefaultHasher::new();
        subject.hash(&mut hasher);
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        self.interval.mul_f64(fraction)
    }
}

/// The tip of `recent` on `subject`.
fn tip(subject: &str, recent: &Recent) -> Option<(String, Bytes)> {
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
    payload.ok().map(|p| (subject.to_owned(), Bytes::from(p)))
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
            recent: Mutex::new(RecentKeys::new(
                interval.unwrap_or(DEFAULT_TIP_INTERVAL),
                window,
            )),
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
        if self.interval.is_none() {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            recent.published(subject, is_task, id, rev, Instant::now());
        }
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tokio::spawn(tip_loop(Arc::downgrade(self), link.clone()));
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

/// Tips each key at its time (every `interval`, spread over it), and every key at once after a
/// reconnect; ends when the publisher is dropped.
///
/// No ordering lock is taken: a key's rev is noted only once its event was handed to the
/// connection, so each tip queues behind the event it names, and a tip that meets a newer event
/// on the way names a rev at or below the hub's, which changes nothing.
async fn tip_loop(tipper: Weak<Tipper>, link: Link) {
    let mut connects = link.connects();
    // The last moment the connection was seen up: after an outage the window counts up to it,
    // however long the outage, since the last events before it are the likeliest lost.
    let mut last_connected = Instant::now();
    loop {
        tokio::time::sleep(RECONNECT_POLL).await;
        let Some(tipper) = tipper.upgrade() else {
            return;
        };
        if !link.is_connected() {
            // Tips published now would only wait in the client's buffer; the reconnect sends them.
            continue;
        }
        let now = Instant::now();
        let came_back = link.connects() != connects;
        connects = link.connects();
        let tips = match tipper.recent.lock() {
            Ok(mut recent) if came_back => recent.every(last_connected),
            Ok(mut recent) => recent.due(now),
            Err(_) => continue,
        };
        last_connected = now;
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

    const INTERVAL: Duration = Duration::from_secs(5);

    #[test]
    fn tips_name_each_keys_highest_rev_until_the_window_passes() {
        let start = Instant::now();
        let mut recent = RecentKeys::new(INTERVAL, Duration::from_secs(60));
        recent.published("vwed.task.t-1.execution", true, "t-1", 5, start);
        recent.published("vwed.task.t-1.execution", true, "t-1", 3, start);
        recent.published("vwed.scene.s.storage", false, "s", 9, start);
        let mut tips = recent.due(start + INTERVAL);
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
        let later = recent.due(start + Duration::from_secs(61));
        assert_eq!(
            later.len(),
            1,
            "the scene's window passed; the task's did not"
        );
        assert!(later[0]
            .1
            .starts_with(br#"{"task_record_id":"t-1","rev":6"#));
        assert_eq!(recent.len(), 1);
        assert!(recent.due(start + Duration::from_secs(100)).is_empty());
        assert!(recent.is_empty());
    }

    /// Keys first published together are tipped spread over the interval, each exactly once
    /// per interval, and a round long overdue tips each once, not once per missed interval.
    #[test]
    fn keys_are_tipped_spread_over_the_interval_each_once_per_interval() {
        let start = Instant::now();
        let mut recent = RecentKeys::new(INTERVAL, Duration::from_secs(60));
        for key in 0..1000 {
            let subject = format!("vwed.task.t-{key}.execution");
            recent.published(&subject, true, &format!("t-{key}"), 7, start);
        }
        let tenth = INTERVAL / 10;
        let mut seen: HashMap<String, u32> = HashMap::new();
        for step in 1..=20 {
            let tips = recent.due(start + tenth * step);
            // About a hundred a step: a tenth of the keys, give or take what hashing spreads.
            assert!(
                (50..=150).contains(&tips.len()),
                "{} tips at step {step}",
                tips.len()
            );
            for (subject, _) in tips {
                *seen.entry(subject).or_default() += 1;
            }
            if step % 10 == 0 {
                assert_eq!(seen.len(), 1000, "every key tipped by step {step}");
                assert!(seen.values().all(|&n| n == step / 10), "once per interval");
            }
        }
        let late = start + tenth * 20 + INTERVAL * 5;
        let overdue = recent.due(late);
        assert_eq!(overdue.len(), 1000, "each key once, however late the round");
        assert!(recent.due(late).is_empty());
        // And the keys keep their phases: still spread, not one burst an interval later.
        for step in 1..=10 {
            let tips = recent.due(late + tenth * step).len();
            assert!(
                (50..=150).contains(&tips),
                "{tips} tips at step {step} after"
            );
        }
        assert_eq!(
            recent.every(start).len(),
            1000,
            "after a reconnect: every key at once"
        );
    }

    /// A zero interval (a caller's mistake) tips each due key once per call, never looping.
    #[test]
    fn a_zero_interval_does_not_loop() {
        let start = Instant::now();
        let mut recent = RecentKeys::new(Duration::ZERO, Duration::from_secs(60));
        recent.published("vwed.scene.s.storage", false, "s", 1, start);
        assert_eq!(recent.due(start).len(), 1);
        assert_eq!(recent.due(start).len(), 1);
    }
}

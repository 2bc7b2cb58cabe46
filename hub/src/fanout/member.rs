//! A connection as the fan-out sees it: somewhere to push frames into, never to wait on.
//!
//! Two lanes lead to each connection. Changes (broadcast events, status-change notices, errors)
//! go through a bounded queue, since every one of them matters. States go through a slot that
//! holds only the newest: a client that reads slowly gets the latest state late rather than a
//! backlog of stale ones, and a stalled client costs one state's memory at most. The two lanes
//! keep their order: a state is written after every change queued before it, so the last thing a
//! client hears about a location is never older than what it was told before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::messages::Frame;
use crate::metrics::Metrics;

/// Identifies one connection's membership in one topic.
pub type MemberId = u64;

/// A process-wide sequence, so ids never repeat while the hub runs.
fn next_member_id() -> MemberId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How a push into a queue went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the socket.
    Queued,
    /// The queue is full: the client is not keeping up.
    Full,
    /// The connection is gone; its leave is on its way.
    Closed,
}

/// The newest state not yet written to the socket.
#[derive(Debug, Default)]
struct StateSlot {
    /// Replaced, never appended to.
    latest: Mutex<Option<PendingState>>,
    /// Wakes the writer when a state is put in.
    filled: Notify,
}

#[derive(Debug)]
struct PendingState {
    frame: Frame,
    /// How many changes had been queued when this state was put in: it goes out after them.
    after: u64,
}

impl StateSlot {
    /// The pending state, if every change queued before it has been taken.
    fn take_after(&self, taken: u64) -> Option<Frame> {
        let mut slot = self.latest.lock().ok()?;
        if slot.as_ref()?.after <= taken {
            slot.take().map(|pending| pending.frame)
        } else {
            None
        }
    }
}

/// The sending side of one connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// Bounded, so a stalled socket costs a fixed amount of memory.
    frames: mpsc::Sender<Frame>,
    /// Changes queued so far; only the connection's topic sends, so this orders the lanes.
    queued: Arc<AtomicU64>,
    /// The state lane.
    state: Arc<StateSlot>,
    /// Cancelled to tell the connection to close with 1013 because it fell behind.
    too_slow: CancellationToken,
    /// Counts deliveries and drops.
    metrics: Arc<Metrics>,
}

/// The receiving side, owned by the connection.
pub struct Inbox {
    /// Changes in the order the fan-out produced them.
    frames: mpsc::Receiver<Frame>,
    /// Changes taken from `frames` so far.
    taken: u64,
    /// The state lane.
    state: Arc<StateSlot>,
    /// Cancelled when the fan-out gave up on this client.
    pub too_slow: CancellationToken,
}

/// A connection's two lanes, the change queue holding up to `capacity` frames.
pub fn outbox(capacity: usize, metrics: Arc<Metrics>) -> (Outbox, Inbox) {
    let (frames, receiver) = mpsc::channel(capacity.max(1));
    let state = Arc::new(StateSlot::default());
    let too_slow = CancellationToken::new();
    let outbox = Outbox {
        frames,
        queued: Arc::default(),
        state: state.clone(),
        too_slow: too_slow.clone(),
        metrics,
    };
    let inbox = Inbox {
        frames: receiver,
        taken: 0,
        state,
        too_slow,
    };
    (outbox, inbox)
}

impl Outbox {
    /// Queues a change without waiting.
    pub fn offer(&self, frame: Frame) -> Delivery {
        match self.frames.try_send(frame) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                self.metrics.messages_delivered.inc();
                Delivery::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.messages_dropped.inc();
                Delivery::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Queues a change, and closes the connection with 1013 when it cannot keep up: for streams
    /// where a dropped message would be a lost change.
    pub fn offer_or_close(&self, frame: Frame) {
        if self.offer(frame) == Delivery::Full && !self.too_slow.is_cancelled() {
            self.metrics.slow_clients_closed.inc();
            self.too_slow.cancel();
        }
    }

    /// Puts a state in the state lane, replacing one the client has not been sent yet.
    pub fn offer_state(&self, frame: Frame) {
        let pending = PendingState {
            frame,
            after: self.queued.load(Ordering::Acquire),
        };
        let replaced = match self.state.latest.lock() {
            Ok(mut slot) => slot.replace(pending).is_some(),
            Err(_) => return,
        };
        if replaced {
            self.metrics.messages_dropped.inc();
        }
        self.metrics.messages_delivered.inc();
        self.state.filled.notify_one();
    }
}

impl Inbox {
    /// The next frame to write, in the order the fan-out offered them; waits for one.
    /// Cancel-safe: a frame is only taken when this returns it.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.try_next() {
                return Some(frame);
            }
            tokio::select! {
                frame = self.frames.recv() => {
                    self.taken += 1;
                    return frame;
                }
                () = self.state.filled.notified() => {}
            }
        }
    }

    /// The next frame if one is ready now.
    pub fn try_next(&mut self) -> Option<Frame> {
        if let Some(state) = self.state.take_after(self.taken) {
            return Some(state);
        }
        let frame = self.frames.try_recv().ok()?;
        self.taken += 1;
        Some(frame)
    }
}

/// What a member receives.
#[derive(Debug, Clone)]
pub enum Mode<F> {
    /// Every event as it happens (endpoints 2 and 4).
    Broadcast,
    /// The filtered state on join, then at most one update per `interval`, only when it changed;
    /// plus the notices its filter reaches (endpoints 1 and 3).
    Realtime {
        /// Which part of the state the client watches.
        filter: F,
        /// The shortest time between two periodic updates.
        interval: Duration,
    },
}

/// A connection joining a topic.
#[derive(Debug)]
pub struct Member<F> {
    /// Names this membership in later commands (get_status, leave).
    pub id: MemberId,
    /// What the connection receives.
    pub mode: Mode<F>,
    /// Where its frames go.
    pub outbox: Outbox,
    /// Set while a `get_status` of this member waits in the topic's queue, so that a client
    /// sending many cannot grow that queue: repeats before the answer are one request.
    pub status_requested: Arc<AtomicBool>,
}

impl<F> Member<F> {
    /// A new member with its own id.
    pub fn new(mode: Mode<F>, outbox: Outbox) -> Self {
        Self {
            id: next_member_id(),
            mode,
            outbox,
            status_requested: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> Frame {
        Frame::from_static(text)
    }

    fn drain(inbox: &mut Inbox) -> Vec<String> {
        std::iter::from_fn(|| inbox.try_next())
            .map(|f| f.as_str().to_owned())
            .collect()
    }

    #[test]
    fn a_state_goes_out_after_the_changes_queued_before_it() {
        let (outbox, mut inbox) = outbox(8, Arc::default());
        outbox.offer(frame("change 1"));
        outbox.offer(frame("change 2"));
        outbox.offer_state(frame("state A"));
        outbox.offer(frame("change 3"));
        assert_eq!(
            drain(&mut inbox),
            ["change 1", "change 2", "state A", "change 3"]
        );
    }

    #[test]
    fn a_newer_state_replaces_an_unsent_one_and_keeps_its_place_after_later_changes() {
        let (outbox, mut inbox) = outbox(8, Arc::default());
        outbox.offer(frame("change 1"));
        outbox.offer_state(frame("state A"));
        outbox.offer(frame("change 2"));
        outbox.offer_state(frame("state B"));
        assert_eq!(drain(&mut inbox), ["change 1", "change 2", "state B"]);
    }

    #[test]
    fn a_full_queue_drops_changes_but_never_the_latest_state() {
        let (outbox, mut inbox) = outbox(2, Arc::default());
        assert_eq!(outbox.offer(frame("change 1")), Delivery::Queued);
        assert_eq!(outbox.offer(frame("change 2")), Delivery::Queued);
        assert_eq!(outbox.offer(frame("change 3")), Delivery::Full);
        outbox.offer_state(frame("state A"));
        assert_eq!(drain(&mut inbox), ["change 1", "change 2", "state A"]);
    }

    #[test]
    fn offer_or_close_gives_up_on_a_full_queue() {
        let (outbox, inbox) = outbox(1, Arc::default());
        outbox.offer_or_close(frame("change 1"));
        assert!(!inbox.too_slow.is_cancelled());
        outbox.offer_or_close(frame("change 2"));
        assert!(inbox.too_slow.is_cancelled());
    }
}

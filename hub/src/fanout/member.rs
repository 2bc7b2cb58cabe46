//! A connection as the fan-out sees it: somewhere to push frames into, never to wait on.
//!
//! Two lanes lead to each connection. Changes (broadcast events, status-change notices, errors)
//! go through a bounded queue, since every one of them matters. States go through a slot that
//! holds only the newest: a client that reads slowly gets the latest state late rather than a
//! backlog of stale ones, and a stalled client costs one state's memory at most. The two lanes
//! keep their order: a state is written after every change queued before it, so the last thing a
//! client hears about a location is never older than what it was told before. Once a realtime
//! client has lost a notice to a full queue, the next state stands in for the changes queued
//! before it, which are skipped, so a slow reader is never starved of states.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
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
    /// The sequence number the next change would have had when this state was put in: changes
    /// numbered below it were queued before it.
    after: u64,
    /// Notices dropped for a full queue before this state was put in.
    losses: u64,
}

impl StateSlot {
    /// The pending state, if no change numbered below `next_change` was queued before it.
    /// Checked and taken under one lock, so a newer state put in meanwhile is never taken early.
    fn take_if_due(&self, next_change: u64) -> Option<PendingState> {
        let mut slot = self.latest.lock().ok()?;
        if slot.as_ref()?.after <= next_change {
            slot.take()
        } else {
            None
        }
    }

    /// Whether a pending state stands in for change `seq`: it was put in after that change and
    /// after more notice losses than `losses_seen`, so it tells what the lost notices would have.
    fn stands_in_for(&self, seq: u64, losses_seen: u64) -> bool {
        self.latest
            .lock()
            .map(|slot| {
                slot.as_ref()
                    .is_some_and(|pending| seq < pending.after && pending.losses > losses_seen)
            })
            .unwrap_or(false)
    }
}

/// The change lane: a bounded queue that allocates only once something waits in it, so an
/// idle connection costs a few words here (a tokio channel allocates a block of slots and a
/// cache-padded header up front, about 1.8 KB per connection).
#[derive(Debug)]
struct ChangeQueue {
    /// Changes with their sequence numbers, oldest first.
    items: Mutex<VecDeque<(u64, Frame)>>,
    /// Most changes that may wait; past it an offer is refused as full.
    capacity: usize,
    /// Wakes the writer when a change is queued or the last sender leaves.
    queued: Notify,
    /// Outboxes alive; none left means the topic is gone and the writer should stop.
    senders: AtomicUsize,
    /// Set when the inbox is dropped, so offers say the connection is gone.
    receiver_gone: AtomicBool,
}

/// Why a change was not queued.
enum Refused {
    /// The queue holds `capacity` changes.
    Full,
    /// The connection has gone.
    Closed,
}

impl ChangeQueue {
    fn try_push(&self, change: (u64, Frame)) -> Result<(), Refused> {
        if self.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        {
            let Ok(mut items) = self.items.lock() else {
                return Err(Refused::Closed);
            };
            if items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            items.push_back(change);
        }
        self.queued.notify_one();
        Ok(())
    }

    fn try_pop(&self) -> Option<(u64, Frame)> {
        let mut items = self.items.lock().ok()?;
        let change = items.pop_front();
        // A burst may have grown the queue; an idle connection should not keep its peak.
        // Steady traffic, a change or two at a time, stays within 8 slots and is not churned.
        if items.is_empty() && items.capacity() > 8 {
            *items = VecDeque::new();
        }
        change
    }

    /// The next change; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: a change is taken only in the poll that returns it.
    async fn pop(&self) -> Option<(u64, Frame)> {
        loop {
            if let Some(change) = self.try_pop() {
                return Some(change);
            }
            if self.senders.load(Ordering::Acquire) == 0 {
                return self.try_pop();
            }
            // `notify_one` keeps a permit when nobody waits, so a change queued since the
            // check above is not missed.
            self.queued.notified().await;
        }
    }
}

/// The sending side of one connection.
#[derive(Debug)]
pub struct Outbox {
    /// Bounded, so a stalled socket costs a fixed amount of memory. Each change carries its
    /// sequence number, so the writer can put states in their place.
    frames: Arc<ChangeQueue>,
    /// The sequence number of the next change; only the connection's topic sends.
    next_seq: Arc<AtomicU64>,
    /// Notices dropped for a full queue so far: a state put in after a loss stands in for the
    /// changes queued before it, which the writer then skips.
    losses: Arc<AtomicU64>,
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
    frames: Arc<ChangeQueue>,
    /// A change taken from `frames` that waits for a state queued before it.
    held: Option<(u64, Frame)>,
    /// The sequence number of the next change `frames` will yield.
    next_seq: u64,
    /// Notice losses already stood in for by a state the writer took.
    losses_seen: u64,
    /// The state lane.
    state: Arc<StateSlot>,
    /// Cancelled when the fan-out gave up on this client.
    pub too_slow: CancellationToken,
    /// Counts changes skipped because a state covers them.
    metrics: Arc<Metrics>,
}

/// A connection's two lanes, the change queue holding up to `capacity` frames.
pub fn outbox(capacity: usize, metrics: Arc<Metrics>) -> (Outbox, Inbox) {
    let frames = Arc::new(ChangeQueue {
        items: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        queued: Notify::new(),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
    });
    let receiver = frames.clone();
    let state = Arc::new(StateSlot::default());
    let too_slow = CancellationToken::new();
    let outbox = Outbox {
        frames,
        next_seq: Arc::default(),
        losses: Arc::default(),
        state: state.clone(),
        too_slow: too_slow.clone(),
        metrics: metrics.clone(),
    };
    let inbox = Inbox {
        frames: receiver,
        held: None,
        next_seq: 0,
        losses_seen: 0,
        state,
        too_slow,
        metrics,
    };
    (outbox, inbox)
}

impl Outbox {
    /// Queues a change without waiting.
    pub fn offer(&self, frame: Frame) -> Delivery {
        let seq = self.next_seq.load(Ordering::Acquire);
        match self.frames.try_push((seq, frame)) {
            Ok(()) => {
                self.next_seq.store(seq + 1, Ordering::Release);
                self.metrics.messages_delivered.inc();
                Delivery::Queued
            }
            Err(Refused::Full) => {
                self.metrics.messages_dropped.inc();
                Delivery::Full
            }
            Err(Refused::Closed) => Delivery::Closed,
        }
    }

    /// Queues a status-change notice for a realtime client. One that does not fit is lost, and
    /// the state that follows stands in for it.
    pub fn offer_notice(&self, frame: Frame) -> Delivery {
        let delivery = self.offer(frame);
        if delivery == Delivery::Full {
            self.losses.fetch_add(1, Ordering::AcqRel);
        }
        delivery
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
            after: self.next_seq.load(Ordering::Acquire),
            losses: self.losses.load(Ordering::Acquire),
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

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.frames.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            frames: self.frames.clone(),
            next_seq: self.next_seq.clone(),
            losses: self.losses.clone(),
            state: self.state.clone(),
            too_slow: self.too_slow.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.frames.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: wake the writer so it sees the topic is gone.
            self.frames.queued.notify_one();
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.frames.receiver_gone.store(true, Ordering::Release);
        if let Ok(mut items) = self.frames.items.lock() {
            items.clear();
        }
    }
}

impl Inbox {
    /// The next frame to write, in the order the fan-out offered them; waits for one.
    /// Cancel-safe: a frame taken from the queue is held until it is returned.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.try_next() {
                return Some(frame);
            }
            tokio::select! {
                change = self.frames.pop() => {
                    let change = change?;
                    self.next_seq = change.0 + 1;
                    self.held = Some(change);
                }
                () = self.state.filled.notified() => {}
            }
        }
    }

    /// The next frame if one is ready now.
    pub fn try_next(&mut self) -> Option<Frame> {
        loop {
            if self.held.is_none() {
                if let Some(change) = self.frames.try_pop() {
                    self.next_seq = change.0 + 1;
                    self.held = Some(change);
                }
            }
            let first_unsent = self.held.as_ref().map_or(self.next_seq, |(seq, _)| *seq);
            if let Some(state) = self.state.take_if_due(first_unsent) {
                self.losses_seen = state.losses;
                return Some(state.frame);
            }
            let (seq, frame) = self.held.take()?;
            // After a loss, a pending state is the truth about everything queued before it.
            if self.state.stands_in_for(seq, self.losses_seen) {
                self.metrics.messages_dropped.inc();
                continue;
            }
            return Some(frame);
        }
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
    fn after_a_loss_the_state_stands_in_for_the_changes_before_it() {
        let (outbox, mut inbox) = outbox(2, Arc::default());
        assert_eq!(outbox.offer_notice(frame("change 1")), Delivery::Queued);
        assert_eq!(outbox.offer_notice(frame("change 2")), Delivery::Queued);
        assert_eq!(outbox.offer_notice(frame("change 3")), Delivery::Full);
        outbox.offer_state(frame("state A"));
        assert_eq!(drain(&mut inbox), ["state A"]);
        // Once the state is out, changes flow in order again.
        outbox.offer(frame("change 4"));
        outbox.offer_state(frame("state B"));
        outbox.offer(frame("change 5"));
        assert_eq!(drain(&mut inbox), ["change 4", "state B", "change 5"]);
    }

    #[test]
    fn a_change_received_while_waiting_keeps_its_place_after_an_earlier_state() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (outbox, mut inbox) = outbox(8, Arc::default());
            outbox.offer(frame("change 1"));
            assert_eq!(inbox.next().await.unwrap().as_str(), "change 1");
            outbox.offer_state(frame("state A"));
            outbox.offer(frame("change 2"));
            assert_eq!(inbox.next().await.unwrap().as_str(), "state A");
            assert_eq!(inbox.next().await.unwrap().as_str(), "change 2");
        });
    }

    #[test]
    fn a_dropped_error_does_not_let_a_state_swallow_events() {
        let (outbox, mut inbox) = outbox(2, Arc::default());
        outbox.offer_or_close(frame("event 1"));
        outbox.offer_or_close(frame("event 2"));
        assert_eq!(outbox.offer(frame("error")), Delivery::Full);
        outbox.offer_state(frame("state A"));
        assert_eq!(drain(&mut inbox), ["event 1", "event 2", "state A"]);
    }

    #[test]
    fn only_a_state_put_in_after_a_loss_stands_in_for_earlier_changes() {
        let (outbox, mut inbox) = outbox(2, Arc::default());
        outbox.offer_notice(frame("change 1"));
        outbox.offer_state(frame("state A"));
        outbox.offer_notice(frame("change 2"));
        assert_eq!(outbox.offer_notice(frame("change 3")), Delivery::Full);
        // state A was put in before the loss: it does not know what change 3 said.
        assert_eq!(drain(&mut inbox), ["change 1", "state A", "change 2"]);
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

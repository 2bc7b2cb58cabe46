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
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;

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

/// What the writer is to do next.
#[derive(Debug)]
pub enum Next {
    /// Write this frame.
    Frame(Frame),
    /// The fan-out gave up on this client, whose queue was full: close with 1013.
    TooSlow,
    /// The topic is gone and everything it queued has been taken.
    Ended,
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

/// Everything the two ends of one connection's lanes share, in one allocation: a connection
/// is mostly idle, and every allocation per connection counts at 15,000 of them.
#[derive(Debug)]
struct Lanes {
    /// The change lane, oldest first, each change with its sequence number so the writer can
    /// put states in their place. A deque that allocates only once something waits in it.
    changes: Mutex<VecDeque<(u64, Frame)>>,
    /// Most changes that may wait; past it an offer is refused as full, so a stalled socket
    /// costs a fixed amount of memory.
    capacity: usize,
    /// The state lane: the newest state not yet written, replaced, never appended to.
    state: Mutex<Option<PendingState>>,
    /// The sequence number of the next change; only the connection's topic sends.
    next_seq: AtomicU64,
    /// Notices dropped for a full queue so far: a state put in after a loss stands in for the
    /// changes queued before it, which the writer then skips.
    losses: AtomicU64,
    /// Outboxes alive; none left means the topic is gone and the writer should stop.
    senders: AtomicUsize,
    /// Set when the inbox is dropped, so offers say the connection is gone.
    receiver_gone: AtomicBool,
    /// Set when the fan-out gives up on the client.
    too_slow: AtomicBool,
    /// The writer's task, woken by anything above that it should act on. There is one waiter,
    /// so registering is a compare-and-swap rather than a lock and a list entry per wait.
    writer: AtomicWaker,
}

/// Why a change was not queued.
enum Refused {
    /// The queue holds `capacity` changes.
    Full,
    /// The connection has gone.
    Closed,
}

impl Lanes {
    fn try_push(&self, change: (u64, Frame)) -> Result<(), Refused> {
        if self.receiver_gone.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        {
            let Ok(mut changes) = self.changes.lock() else {
                return Err(Refused::Closed);
            };
            if changes.len() >= self.capacity {
                return Err(Refused::Full);
            }
            changes.push_back(change);
        }
        self.writer.wake();
        Ok(())
    }

    fn try_pop(&self) -> Option<(u64, Frame)> {
        let mut changes = self.changes.lock().ok()?;
        let change = changes.pop_front();
        // A burst may have grown the queue; an idle connection should not keep its peak.
        // Steady traffic, a change or two at a time, stays within 8 slots and is not churned.
        if changes.is_empty() && changes.capacity() > 8 {
            *changes = VecDeque::new();
        }
        change
    }

    /// The pending state, if no change numbered below `next_change` was queued before it.
    /// Checked and taken under one lock, so a newer state put in meanwhile is never taken early.
    fn take_state_if_due(&self, next_change: u64) -> Option<PendingState> {
        let mut slot = self.state.lock().ok()?;
        if slot.as_ref()?.after <= next_change {
            slot.take()
        } else {
            None
        }
    }

    /// Whether a pending state stands in for change `seq`: it was put in after that change and
    /// after more notice losses than `losses_seen`, so it tells what the lost notices would have.
    fn state_stands_in_for(&self, seq: u64, losses_seen: u64) -> bool {
        self.state
            .lock()
            .map(|slot| {
                slot.as_ref()
                    .is_some_and(|pending| seq < pending.after && pending.losses > losses_seen)
            })
            .unwrap_or(false)
    }
}

/// The sending side of one connection.
#[derive(Debug)]
pub struct Outbox {
    /// Shared with the connection's [`Inbox`].
    lanes: Arc<Lanes>,
    /// Counts deliveries and drops.
    metrics: Arc<Metrics>,
}

/// The receiving side, owned by the connection.
pub struct Inbox {
    /// Shared with the connection's [`Outbox`]es.
    lanes: Arc<Lanes>,
    /// A change taken from the queue that waits for a state queued before it.
    held: Option<(u64, Frame)>,
    /// The sequence number of the next change the queue will yield.
    next_seq: u64,
    /// Notice losses already stood in for by a state the writer took.
    losses_seen: u64,
    /// Counts changes skipped because a state covers them.
    metrics: Arc<Metrics>,
}

/// Tells the connection when the fan-out has given up on it.
pub struct GiveUp {
    /// Shared with the connection's [`Inbox`].
    lanes: Arc<Lanes>,
}

impl GiveUp {
    /// Ready once the fan-out has given up on the client.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.lanes.writer.register(cx.waker());
        if self.lanes.too_slow.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A connection's two lanes, the change queue holding up to `capacity` frames.
pub fn outbox(capacity: usize, metrics: Arc<Metrics>) -> (Outbox, Inbox) {
    let lanes = Arc::new(Lanes {
        changes: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        state: Mutex::new(None),
        next_seq: AtomicU64::new(0),
        losses: AtomicU64::new(0),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        too_slow: AtomicBool::new(false),
        writer: AtomicWaker::new(),
    });
    let outbox = Outbox {
        lanes: lanes.clone(),
        metrics: metrics.clone(),
    };
    let inbox = Inbox {
        lanes,
        held: None,
        next_seq: 0,
        losses_seen: 0,
        metrics,
    };
    (outbox, inbox)
}

impl Outbox {
    /// Queues a change without waiting.
    pub fn offer(&self, frame: Frame) -> Delivery {
        let seq = self.lanes.next_seq.load(Ordering::Acquire);
        match self.lanes.try_push((seq, frame)) {
            Ok(()) => {
                self.lanes.next_seq.store(seq + 1, Ordering::Release);
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
            self.lanes.losses.fetch_add(1, Ordering::AcqRel);
        }
        delivery
    }

    /// Queues a change, and closes the connection with 1013 when it cannot keep up: for streams
    /// where a dropped message would be a lost change.
    pub fn offer_or_close(&self, frame: Frame) {
        if self.offer(frame) == Delivery::Full && !self.lanes.too_slow.swap(true, Ordering::AcqRel)
        {
            self.metrics.slow_clients_closed.inc();
            self.lanes.writer.wake();
        }
    }

    /// Puts a state in the state lane, replacing one the client has not been sent yet.
    pub fn offer_state(&self, frame: Frame) {
        let pending = PendingState {
            frame,
            after: self.lanes.next_seq.load(Ordering::Acquire),
            losses: self.lanes.losses.load(Ordering::Acquire),
        };
        let replaced = match self.lanes.state.lock() {
            Ok(mut slot) => slot.replace(pending).is_some(),
            Err(_) => return,
        };
        if replaced {
            self.metrics.messages_dropped.inc();
        }
        self.metrics.messages_delivered.inc();
        self.lanes.writer.wake();
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.lanes.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            lanes: self.lanes.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.lanes.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: wake the writer so it sees the topic is gone.
            self.lanes.writer.wake();
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.lanes.receiver_gone.store(true, Ordering::Release);
        // The finished task's waker would keep its memory until the topic drops the outbox.
        drop(self.lanes.writer.take());
        if let Ok(mut changes) = self.lanes.changes.lock() {
            changes.clear();
        }
    }
}

impl Inbox {
    /// What to write next, in the order the fan-out offered it; waits for something.
    /// Cancel-safe: a change taken from the queue is held until it is returned.
    pub async fn next(&mut self) -> Next {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`Inbox::next`], for a hand-written poll.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some(next) = self.ready() {
            return Poll::Ready(next);
        }
        self.lanes.writer.register(cx.waker());
        // Whatever was offered between the look above and the registration woke nobody.
        match self.ready() {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// A handle that tells when the fan-out gives up on this client, for waits other than for
    /// the next frame (a write in progress, which may be taking frames from this inbox).
    pub fn give_up_signal(&self) -> GiveUp {
        GiveUp {
            lanes: self.lanes.clone(),
        }
    }

    /// What to write next, if anything is due now.
    fn ready(&mut self) -> Option<Next> {
        if self.lanes.too_slow.load(Ordering::Acquire) {
            return Some(Next::TooSlow);
        }
        if let Some(frame) = self.try_next() {
            return Some(Next::Frame(frame));
        }
        if self.lanes.senders.load(Ordering::Acquire) == 0 {
            // The last sender's offers happened before it left: take any that came in since.
            return Some(self.try_next().map_or(Next::Ended, Next::Frame));
        }
        None
    }

    /// The next frame if one is ready now.
    pub fn try_next(&mut self) -> Option<Frame> {
        loop {
            if self.held.is_none() {
                if let Some(change) = self.lanes.try_pop() {
                    self.next_seq = change.0 + 1;
                    self.held = Some(change);
                }
            }
            let first_unsent = self.held.as_ref().map_or(self.next_seq, |(seq, _)| *seq);
            if let Some(state) = self.lanes.take_state_if_due(first_unsent) {
                self.losses_seen = state.losses;
                return Some(state.frame);
            }
            let (seq, frame) = self.held.take()?;
            // After a loss, a pending state is the truth about everything queued before it.
            if self.lanes.state_stands_in_for(seq, self.losses_seen) {
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

    fn text(next: Next) -> String {
        match next {
            Next::Frame(frame) => frame.as_str().to_owned(),
            other => format!("{other:?}"),
        }
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
            assert_eq!(text(inbox.next().await), "change 1");
            outbox.offer_state(frame("state A"));
            outbox.offer(frame("change 2"));
            assert_eq!(text(inbox.next().await), "state A");
            assert_eq!(text(inbox.next().await), "change 2");
        });
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_waiting_writer_is_woken_for_every_change_offered_from_another_thread() {
        runtime().block_on(async {
            let (outbox, mut inbox) = outbox(100_000, Arc::default());
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 20_000 {
                    match inbox.next().await {
                        Next::Frame(frame) => got.push(frame.as_str().parse::<u32>().unwrap()),
                        other => panic!("{other:?} before the last change"),
                    }
                }
                (got, inbox)
            });
            let writer = std::thread::spawn(move || {
                for n in 0..20_000u32 {
                    assert_eq!(outbox.offer(Frame::from(n.to_string())), Delivery::Queued);
                    if n % 1000 == 0 {
                        std::thread::yield_now();
                    }
                }
                // Kept until the reader has everything, so only the offers can wake it.
                outbox
            });
            let outbox = writer.join().unwrap();
            let (got, mut inbox) = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("the reader was not woken")
                .unwrap();
            assert_eq!(got, (0..20_000).collect::<Vec<_>>());
            let ended = tokio::spawn(async move { inbox.next().await });
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(outbox);
            let ended = tokio::time::timeout(Duration::from_secs(5), ended).await;
            assert!(matches!(ended, Ok(Ok(Next::Ended))), "{ended:?}");
        });
    }

    #[test]
    fn giving_up_wakes_a_write_in_progress_and_comes_before_queued_frames() {
        runtime().block_on(async {
            let (outbox, mut inbox) = outbox(1, Arc::default());
            let give_up = inbox.give_up_signal();
            let waiting = tokio::spawn(async move { poll_fn(|cx| give_up.poll(cx)).await });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiting.is_finished());
            outbox.offer_or_close(frame("change 1"));
            outbox.offer_or_close(frame("change 2"));
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("the wait for the give-up was not woken")
                .unwrap();
            assert!(matches!(inbox.next().await, Next::TooSlow));
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
        let (outbox, mut inbox) = outbox(1, Arc::default());
        outbox.offer_or_close(frame("change 1"));
        assert!(!inbox.lanes.too_slow.load(Ordering::Acquire));
        outbox.offer_or_close(frame("change 2"));
        // Giving up comes before what is still queued: the connection closes now.
        assert!(matches!(inbox.ready(), Some(Next::TooSlow)));
    }
}

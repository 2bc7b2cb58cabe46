//! The sync core: how one key's view keeps in step with its owner (SPEC section 3).
//!
//! A pure state machine, in the manner of `quinn-proto` and `h2`'s frame layer: inputs in (an
//! event, a tip, a snapshot reply, a retry falling due, word that messages were lost), effects
//! out through [`Effects`] (request a snapshot, retry after a delay, forward an event to
//! broadcast members, tell realtime members of a change, deliver owed states, tell everyone the
//! key vanished). No tokio, no broker, no clock: the topic task around it does the I/O, and the
//! property tests drive it through every interleaving they can think of.
//!
//! The rules:
//! * **Loading.** Subscribe first, buffer events, request a snapshot; apply the buffered events
//!   whose rev is above the snapshot's, then go live. A buffered event that arrived while the
//!   request was out and still shows a gap may be newer than the snapshot: it waits for another.
//! * **Live.** An event above the held rev applies; one that shows a gap (a task's results
//!   missing before its index, or a `prev_rev` above the held rev: its publisher sent an event
//!   the view never took) calls for a snapshot while the old view keeps serving.
//! * **Tips.** A tip above the held rev means events were lost: a snapshot. A tip at or below
//!   it changes nothing. A tip that arrives while loading must be covered by what loading ends
//!   with, or another snapshot follows.
//! * **A restored store.** [`STALE_EVENTS_BEFORE_SNAPSHOT`] events in a row at or below the
//!   held rev (none applied between) call for a snapshot. A snapshot older than the view is
//!   refused [`MAX_STALE_REFUSALS`] times, then believed; from then on broadcast members are
//!   forwarded the owner's events above the believed rev.
//! * **A vanished key.** A snapshot that answers "not found" for a key the view held tells every
//!   member once; realtime members get no more of the old state, and the key may come back.
//! * **Broadcast members** get every event once, as it arrives, even while loading: an event
//!   whose rev is not above the last forwarded one, or the snapshot's, is a duplicate or late.
//!   Tips are never forwarded.

use std::collections::VecDeque;
use std::fmt::Display;
use std::time::Duration;

use crate::view::{Applied, View};

/// Events kept while a snapshot is on its way, by count and by payload bytes; past either, the
/// oldest are dropped, and a snapshot that does not cover them is followed by another.
pub const MAX_BUFFERED_EVENTS: usize = 10_000;
/// See [`MAX_BUFFERED_EVENTS`].
pub const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;

/// First wait before retrying a failed snapshot; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between snapshot attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Refusals of a snapshot older than the view before it is believed: an owner whose revs went
/// back (a restored database) must not freeze the view for good.
pub const MAX_STALE_REFUSALS: u32 = 3;

/// Stale events in a row, with none applied between them, that suggest the owner's store went
/// back (SPEC 3, "A store restored to an older rev"): the view takes a fresh snapshot.
pub const STALE_EVENTS_BEFORE_SNAPSHOT: u32 = 3;

/// What the core asks of the topic task around it. Called during an input; the view passed to
/// [`deliver_owed`](Effects::deliver_owed) is the core's own, read-only.
pub trait Effects<V: View> {
    /// Send a snapshot request now (subscribing first if the topic is not yet), and hand its
    /// outcome to [`SyncCore::on_reply`]. Never asked while a request is out.
    fn request_snapshot(&mut self);
    /// Call [`SyncCore::on_retry_due`] after `delay` (replacing any earlier such wait).
    fn retry_in(&mut self, delay: Duration);
    /// Broadcast members get `event`, as it arrived.
    fn forward(&mut self, event: &V::Event);
    /// Realtime members whose filter it reaches hear of `notice` at once.
    fn notice(&mut self, event: &V::Event, notice: V::Notice);
    /// Members owed a state get it now, or word of why not: `view` is `None` until a first
    /// snapshot answered; `failing` says snapshots are failing meanwhile.
    fn deliver_owed(&mut self, view: Option<&V>, version: u64, failing: bool);
    /// The key was known and the owner no longer knows it: every member that was given its
    /// state is told once, and realtime members get no more of it.
    fn vanished(&mut self);
    /// An event arrived with a rev the view already has (counted).
    fn stale_event(&mut self);
    /// A payload was refused (counted, logged); the view is unchanged.
    fn reject(&mut self, cause: &'static str, detail: &dyn Display);
    /// How a snapshot attempt ended: `found`, `not_found`, or why it failed.
    fn snapshot_outcome(&mut self, outcome: &'static str);
}

/// The answer to one snapshot request, as the topic task read it.
pub enum Reply<V> {
    /// The owner's state and the rev of the last event it reflects.
    Found(u64, V),
    /// The owner does not know the key.
    NotFound,
    /// No usable answer: the request timed out, nobody answered, the broker is down, or the
    /// answer was malformed (already rejected). The reason is a metric label.
    Failed(&'static str),
}

/// One key's view and where it stands with the owner.
pub struct SyncCore<V: View> {
    /// The key, for logs.
    id: String,
    /// The state; `None` until the first snapshot answered (found or not).
    view: Option<V>,
    /// The rev of the last event the view reflects; `None` before any (a key not found).
    view_rev: Option<u64>,
    /// Bumped on every change to the view, so renders know when they are stale.
    version: u64,
    /// The highest rev sent to broadcast members.
    forwarded_rev: Option<u64>,
    /// Whether the view is live or waiting for a snapshot.
    phase: Phase<V::Event>,
    /// Snapshots in a row that did not cover a gap or a tip; spaces out the next ones.
    gaps: u32,
    /// Events in a row dropped as stale while live, none applied between them.
    stale_in_a_row: u32,
}

/// Where the view stands with the owner.
enum Phase<E> {
    /// Events apply as they arrive.
    Live,
    /// A snapshot is requested or due; events wait in the buffer. Boxed: a key is live nearly
    /// always, and every watched key would otherwise carry the loading state's 200 bytes.
    Loading(Box<Loading<E>>),
}

struct Loading<E> {
    /// Events that arrived since loading began, in order.
    buffer: VecDeque<Buffered<E>>,
    /// Payload bytes of the buffered events.
    buffered_bytes: usize,
    /// The highest rev dropped from a full buffer: a snapshot older than it is not enough.
    dropped_rev: Option<u64>,
    /// The highest tip seen while loading: a snapshot (with the buffer) must reach it.
    tip_rev: Option<u64>,
    /// Failed attempts in a row; sets the retry delay.
    failures: u32,
    /// Whether a request is on its way.
    in_flight: bool,
    /// Events may have been lost after the request on its way was sent: take one more after it.
    again: bool,
    /// Snapshots refused in a row for being older than the view.
    stale_refusals: u32,
    /// Events buffered so far, dropped ones included.
    arrivals: u64,
    /// `arrivals` when the last request was sent: later events may postdate its snapshot.
    arrivals_at_request: u64,
}

struct Buffered<E> {
    /// Position in arrival order, counted over the whole loading.
    arrival: u64,
    /// The event's rev.
    rev: u64,
    /// Its payload's size, for the buffer's byte budget.
    size: usize,
    /// The event.
    event: E,
}

impl<E> Loading<E> {
    fn new() -> Self {
        Self {
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            dropped_rev: None,
            tip_rev: None,
            failures: 0,
            in_flight: false,
            again: false,
            stale_refusals: 0,
            arrivals: 0,
            arrivals_at_request: 0,
        }
    }

    fn buffer(&mut self, event: E, rev: u64, size: usize) {
        let arrival = self.arrivals;
        self.arrivals += 1;
        while self.buffer.len() >= MAX_BUFFERED_EVENTS
            || (self.buffered_bytes + size > MAX_BUFFERED_BYTES && !self.buffer.is_empty())
        {
            let Some(oldest) = self.buffer.pop_front() else {
                break;
            };
            self.buffered_bytes -= oldest.size;
            self.dropped_rev = Some(self.dropped_rev.map_or(oldest.rev, |d| d.max(oldest.rev)));
        }
        self.buffered_bytes += size;
        self.buffer.push_back(Buffered {
            arrival,
            rev,
            size,
            event,
        });
    }
}

/// How an event met the view.
enum Outcome<E> {
    /// It changed the view, or could not apply to it (rejected): either way it is done with.
    Done,
    /// Its rev is at or below the held one.
    Stale,
    /// It shows a gap: the view needs a snapshot before it can take it.
    Gap(E),
}

impl<V: View> SyncCore<V> {
    /// A core for key `id` that has nothing yet; [`start`](Self::start) it.
    pub fn new(id: String) -> Self {
        Self {
            id,
            view: None,
            view_rev: None,
            version: 0,
            forwarded_rev: None,
            phase: Phase::Loading(Box::new(Loading::new())),
            gaps: 0,
            stale_in_a_row: 0,
        }
    }

    /// The first snapshot request.
    pub fn start(&mut self, effects: &mut impl Effects<V>) {
        self.send_request(effects);
    }

    /// The state, once a first snapshot answered.
    pub fn view(&self) -> Option<&V> {
        self.view.as_ref()
    }

    /// Bumped on every change to the view.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The rev the view reflects.
    #[cfg(test)]
    pub fn view_rev(&self) -> Option<u64> {
        self.view_rev
    }

    /// Whether snapshots are failing (the state may be unavailable, or old).
    pub fn is_failing(&self) -> bool {
        matches!(&self.phase, Phase::Loading(loading) if loading.failures > 0)
    }

    /// Whether the view is live (not waiting for a snapshot).
    #[cfg(test)]
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live)
    }

    /// An event arrived on the key's subject; `size` is its payload's length.
    pub fn on_event(&mut self, event: V::Event, size: usize, effects: &mut impl Effects<V>) {
        let rev = V::event_rev(&event);
        if self.forwarded_rev.is_none_or(|forwarded| rev > forwarded) {
            self.forwarded_rev = Some(rev);
            effects.forward(&event);
        }
        if let Phase::Loading(loading) = &mut self.phase {
            loading.buffer(event, rev, size);
            return;
        }
        match self.apply(event, effects) {
            Outcome::Done => self.stale_in_a_row = 0,
            Outcome::Stale => {
                effects.stale_event();
                self.stale_in_a_row += 1;
                if self.stale_in_a_row >= STALE_EVENTS_BEFORE_SNAPSHOT {
                    tracing::info!(kind = V::KIND.label(), id = %self.id, held = ?self.view_rev, rev,
                        "events keep arriving at or below the held rev; the owner's store may have gone back: taking a fresh snapshot");
                    self.stale_in_a_row = 0;
                    self.load_after(Duration::ZERO, None, effects);
                }
            }
            Outcome::Gap(event) => {
                // At once, unless recent gaps went unexplained: then the publisher is at
                // fault, and snapshots are spaced out.
                let delay = self.gap_delay();
                tracing::info!(kind = V::KIND.label(), id = %self.id, rev, ?delay, "missed events; taking a fresh snapshot");
                self.load_after(delay, Some((event, rev, size)), effects);
            }
        }
    }

    /// A tip arrived: the latest rev the publisher published for the key.
    pub fn on_tip(&mut self, rev: u64, effects: &mut impl Effects<V>) {
        if let Phase::Loading(loading) = &mut self.phase {
            loading.tip_rev = Some(loading.tip_rev.map_or(rev, |tip| tip.max(rev)));
            return;
        }
        if self.view_rev.is_none_or(|held| rev > held) {
            let delay = self.gap_delay();
            tracing::info!(kind = V::KIND.label(), id = %self.id, held = ?self.view_rev, tip = rev, ?delay,
                "a tip names a rev above the view's: events were lost; taking a fresh snapshot");
            self.load_after(delay, None, effects);
            // The snapshot must reach the tip, as one that comes while loading.
            if let Phase::Loading(loading) = &mut self.phase {
                loading.tip_rev = Some(rev);
            }
        }
    }

    /// Events may have been lost (a reconnect, a slow consumer, a subscription that ended):
    /// take a fresh snapshot, keeping the view to serve meanwhile. A request already on its way
    /// is kept (cancelling it would starve the topic under a storm of notices) and followed by
    /// one more.
    pub fn on_lost(&mut self, effects: &mut impl Effects<V>) {
        match &mut self.phase {
            Phase::Live => self.load_after(Duration::ZERO, None, effects),
            Phase::Loading(loading) if loading.in_flight => loading.again = true,
            // Waiting to retry: the cause of the failures may be gone, so go now.
            Phase::Loading(loading) => {
                loading.failures = 0;
                self.send_request(effects);
            }
        }
    }

    /// The wait asked for with [`Effects::retry_in`] is over.
    pub fn on_retry_due(&mut self, effects: &mut impl Effects<V>) {
        if matches!(&self.phase, Phase::Loading(loading) if !loading.in_flight) {
            self.send_request(effects);
        }
    }

    /// The snapshot request on its way was answered (or failed).
    pub fn on_reply(&mut self, reply: Reply<V>, effects: &mut impl Effects<V>) {
        let Phase::Loading(loading) = &mut self.phase else {
            return;
        };
        if !loading.in_flight {
            return;
        }
        loading.in_flight = false;
        let refused = match &reply {
            Reply::Failed(reason) => Some(*reason),
            Reply::Found(rev, _)
                if self.view_rev.is_some_and(|held| *rev < held)
                    && loading.stale_refusals < MAX_STALE_REFUSALS =>
            {
                loading.stale_refusals += 1;
                Some("stale_snapshot")
            }
            _ => None,
        };
        if let Some(reason) = refused {
            effects.snapshot_outcome(reason);
            loading.failures += 1;
            let delay = retry_delay(loading.failures);
            if loading.failures == 1 {
                tracing::warn!(kind = V::KIND.label(), id = %self.id, reason, "snapshot failed; retrying with backoff");
            } else {
                tracing::debug!(kind = V::KIND.label(), id = %self.id, reason, failures = loading.failures, ?delay, "snapshot failed again");
            }
            effects.retry_in(delay);
            effects.deliver_owed(self.view.as_ref(), self.version, true);
            return;
        }
        let Phase::Loading(loading) = std::mem::replace(&mut self.phase, Phase::Live) else {
            return;
        };
        let snapshot = match reply {
            Reply::Found(rev, view) => Some((rev, view)),
            _ => None,
        };
        effects.snapshot_outcome(if snapshot.is_some() {
            "found"
        } else {
            "not_found"
        });
        self.adopt(snapshot, *loading, effects);
    }

    /// Takes the owner's snapshot (or word that the key is unknown), then the buffered events.
    fn adopt(
        &mut self,
        snapshot: Option<(u64, V)>,
        loading: Loading<V::Event>,
        effects: &mut impl Effects<V>,
    ) {
        let existed = self.view.as_ref().is_some_and(V::exists);
        let snapshot_rev = snapshot.as_ref().map(|(rev, _)| *rev);
        if let Some(rev) = snapshot_rev {
            if self.view_rev.is_some_and(|held| rev < held) {
                tracing::warn!(kind = V::KIND.label(), id = %self.id, held = ?self.view_rev, believed = rev,
                    "the owner's rev went back (a restored store?); believing its snapshot");
                // Broadcast members get the owner's events above the rev believed now.
                self.forwarded_rev = Some(rev);
            } else {
                // An event the snapshot already reflects is late: not news to anyone.
                self.forwarded_rev = Some(self.forwarded_rev.map_or(rev, |f| f.max(rev)));
            }
        }
        self.view = Some(snapshot.map_or_else(V::default, |(_, view)| view));
        self.view_rev = snapshot_rev;
        self.version += 1;
        self.stale_in_a_row = 0;
        // An event that arrived before the request and still shows a gap is not the owner's
        // state: it is dropped. One that arrived while the request was out may be newer than the
        // snapshot: it waits, with the rest, for another one.
        let mut gap = false;
        let mut waiting: Option<Loading<V::Event>> = None;
        for buffered in loading.buffer {
            if let Some(waiting) = &mut waiting {
                waiting.buffer(buffered.event, buffered.rev, buffered.size);
                continue;
            }
            let (arrival, rev, size) = (buffered.arrival, buffered.rev, buffered.size);
            if let Outcome::Gap(event) = self.apply(buffered.event, effects) {
                gap = true;
                if arrival >= loading.arrivals_at_request {
                    let mut again = Loading::new();
                    again.buffer(event, rev, size);
                    waiting = Some(again);
                } else {
                    let detail = format_args!("event rev {rev} does not fit the snapshot");
                    effects.reject("gap", &detail);
                }
            }
        }
        let dropped_uncovered = loading
            .dropped_rev
            .is_some_and(|dropped| self.view_rev.is_none_or(|rev| dropped > rev));
        let tip_uncovered = loading
            .tip_rev
            .is_some_and(|tip| self.view_rev.is_none_or(|rev| tip > rev));
        self.gaps = if gap || tip_uncovered {
            self.gaps + 1
        } else {
            0
        };
        if existed && !self.view.as_ref().is_some_and(V::exists) {
            tracing::info!(kind = V::KIND.label(), id = %self.id, "the owner no longer knows the key; telling its clients");
            effects.vanished();
        }
        if let Some(mut waiting) = waiting {
            tracing::info!(kind = V::KIND.label(), id = %self.id, "an event newer than the snapshot shows a gap; taking another");
            waiting.tip_rev = loading.tip_rev;
            self.phase = Phase::Loading(Box::new(waiting));
            effects.retry_in(retry_delay(self.gaps));
        } else if tip_uncovered && self.gaps > MAX_STALE_REFUSALS {
            // The owner tips a rev its snapshots never reach: its handler does not read the rev
            // it tipped (e.g. a fresh clock rev it never stored). Asking on would poll it for
            // good; the view serves what it answered, and the owner's next tip tries again.
            tracing::warn!(kind = V::KIND.label(), id = %self.id, tip = ?loading.tip_rev, rev = ?self.view_rev,
                "snapshots keep answering below the owner's tip; serving them until the next tip");
        } else if tip_uncovered {
            tracing::info!(kind = V::KIND.label(), id = %self.id, tip = ?loading.tip_rev, rev = ?self.view_rev,
                "the snapshot is older than a tip that came meanwhile; taking another");
            let mut again = Loading::new();
            again.tip_rev = loading.tip_rev;
            self.phase = Phase::Loading(Box::new(again));
            effects.retry_in(retry_delay(self.gaps));
        } else if dropped_uncovered || loading.again {
            tracing::info!(kind = V::KIND.label(), id = %self.id, uncovered = dropped_uncovered, "taking another snapshot");
            self.phase = Phase::Loading(Box::new(Loading::new()));
            self.send_request(effects);
        }
        effects.deliver_owed(self.view.as_ref(), self.version, false);
    }

    /// Applies one event to the view and tells realtime members that hear of it at once.
    fn apply(&mut self, event: V::Event, effects: &mut impl Effects<V>) -> Outcome<V::Event> {
        let rev = V::event_rev(&event);
        let Some(view) = self.view.as_mut() else {
            return Outcome::Done;
        };
        if self.view_rev.is_some_and(|held| rev <= held) {
            return Outcome::Stale;
        }
        // The publisher sent the key an event this view never took: lost on the way (a node
        // that died, a broken route), so the view may be wrong in places this event does not
        // touch.
        if V::event_prev_rev(&event)
            .is_some_and(|prev| self.view_rev.is_none_or(|held| prev > held))
        {
            return Outcome::Gap(event);
        }
        match view.apply(&event) {
            Applied::Changed(notice) => {
                self.view_rev = Some(rev);
                self.version += 1;
                if let Some(notice) = notice {
                    effects.notice(&event, notice);
                }
                Outcome::Done
            }
            Applied::Gap => Outcome::Gap(event),
            Applied::Ignored(cause) => {
                effects.reject(cause, &format_args!("event rev {rev} does not apply"));
                Outcome::Done
            }
        }
    }

    /// Goes from live to loading: at once, or after `delay`; `first` is an event to buffer.
    fn load_after(
        &mut self,
        delay: Duration,
        first: Option<(V::Event, u64, usize)>,
        effects: &mut impl Effects<V>,
    ) {
        let mut loading = Loading::new();
        if let Some((event, rev, size)) = first {
            loading.buffer(event, rev, size);
        }
        self.phase = Phase::Loading(Box::new(loading));
        if delay.is_zero() {
            self.send_request(effects);
        } else {
            effects.retry_in(delay);
        }
    }

    /// The wait before a snapshot called for by a gap or a tip: none, unless recent ones went
    /// unexplained (the publisher is at fault), so a broken publisher cannot make the hub ask
    /// its owner without pause.
    fn gap_delay(&self) -> Duration {
        match self.gaps {
            0 => Duration::ZERO,
            gaps => retry_delay(gaps),
        }
    }

    fn send_request(&mut self, effects: &mut impl Effects<V>) {
        let Phase::Loading(loading) = &mut self.phase else {
            return;
        };
        if loading.in_flight {
            return;
        }
        loading.in_flight = true;
        loading.again = false;
        loading.arrivals_at_request = loading.arrivals;
        effects.request_snapshot();
    }
}

/// How long to wait before the next snapshot after `failures` failed ones in a row.
pub fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.pow(exponent))
        .min(MAX_RETRY_DELAY)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::view::TaskView;
    use vwed_publisher::{TaskChange, TaskEvent, TaskResult, TaskSnapshot, TaskStatus};

    /// What the core asked for, for tests to read.
    #[derive(Default, Debug)]
    pub struct Recorder {
        /// Requests sent.
        pub requests: u32,
        /// A request is out and unanswered.
        pub outstanding: bool,
        /// The last wait asked for, until it is taken.
        pub retry: Option<Duration>,
        /// Revs forwarded to broadcast members, in order.
        pub forwarded: Vec<u64>,
        /// Times every member was told the key vanished.
        pub vanished: u32,
        /// Causes of refused payloads.
        pub rejected: Vec<&'static str>,
        /// Stale events counted.
        pub stale: u32,
        /// Snapshot outcomes, in order.
        pub outcomes: Vec<&'static str>,
    }

    impl<V: View> Effects<V> for Recorder {
        fn request_snapshot(&mut self) {
            assert!(!self.outstanding, "a second request while one is out");
            self.requests += 1;
            self.outstanding = true;
        }
        fn retry_in(&mut self, delay: Duration) {
            self.retry = Some(delay);
        }
        fn forward(&mut self, event: &V::Event) {
            self.forwarded.push(V::event_rev(event));
        }
        fn notice(&mut self, _event: &V::Event, _notice: V::Notice) {}
        fn deliver_owed(&mut self, _view: Option<&V>, _version: u64, _failing: bool) {}
        fn vanished(&mut self) {
            self.vanished += 1;
        }
        fn stale_event(&mut self) {
            self.stale += 1;
        }
        fn reject(&mut self, cause: &'static str, _detail: &dyn Display) {
            self.rejected.push(cause);
        }
        fn snapshot_outcome(&mut self, outcome: &'static str) {
            self.outcomes.push(outcome);
        }
    }

    fn result(context: &str) -> TaskResult {
        TaskResult {
            created_at: "2025-06-11T12:00:00.000Z".into(),
            context: context.into(),
            status: TaskStatus::Running,
        }
    }

    fn append(rev: u64, index: u64, context: &str) -> TaskEvent {
        TaskEvent {
            task_record_id: "t".into(),
            rev,
            prev_rev: None,
            change: TaskChange::Append {
                index,
                results: vec![result(context)],
            },
        }
    }

    fn found(rev: u64, contexts: &[&str]) -> Reply<TaskView> {
        let (rev, view) = TaskView::from_snapshot(TaskSnapshot {
            task_record_id: "t".into(),
            rev,
            results: contexts.iter().map(|c| result(c)).collect(),
        });
        Reply::Found(rev, view)
    }

    fn answer(core: &mut SyncCore<TaskView>, effects: &mut Recorder, reply: Reply<TaskView>) {
        assert!(effects.outstanding, "no request to answer");
        effects.outstanding = false;
        core.on_reply(reply, effects);
    }

    fn rendered(core: &SyncCore<TaskView>) -> String {
        String::from_utf8(core.view().expect("a view").render(&())).unwrap()
    }

    /// A live core holding `contexts` at `rev`.
    fn live(rev: u64, contexts: &[&str]) -> (SyncCore<TaskView>, Recorder) {
        let mut core = SyncCore::new("t".into());
        let mut effects = Recorder::default();
        core.start(&mut effects);
        answer(&mut core, &mut effects, found(rev, contexts));
        assert!(core.is_live());
        (core, effects)
    }

    #[test]
    fn a_tip_above_the_held_rev_takes_a_snapshot_and_one_at_or_below_does_nothing() {
        let (mut core, mut effects) = live(5, &["a"]);
        core.on_tip(5, &mut effects);
        core.on_tip(3, &mut effects);
        assert_eq!((effects.requests, core.is_live()), (1, true));
        core.on_tip(7, &mut effects);
        assert_eq!(
            effects.requests, 2,
            "a tip above the view's rev means lost events"
        );
        answer(&mut core, &mut effects, found(7, &["a", "b"]));
        assert!(core.is_live());
        assert_eq!(core.view_rev(), Some(7));
        assert!(effects.forwarded.is_empty(), "tips are never forwarded");
    }

    #[test]
    fn a_tip_that_comes_while_loading_must_be_covered_by_what_loading_ends_with() {
        let mut core = SyncCore::<TaskView>::new("t".into());
        let mut effects = Recorder::default();
        core.start(&mut effects);
        core.on_tip(9, &mut effects);
        // The snapshot was taken before rev 9, whose event was lost: not enough.
        answer(&mut core, &mut effects, found(8, &["a"]));
        assert!(!core.is_live());
        assert_eq!(effects.retry, Some(retry_delay(1)));
        core.on_retry_due(&mut effects);
        answer(&mut core, &mut effects, found(9, &["a", "b"]));
        assert!(core.is_live());
        assert_eq!(rendered(&core), rendered_of(found(9, &["a", "b"])));
    }

    #[test]
    fn snapshots_that_never_reach_a_tip_are_served_after_a_few_tries_not_polled_for_good() {
        let (mut core, mut effects) = live(5, &["a"]);
        core.on_tip(9, &mut effects);
        for attempt in 1..=MAX_STALE_REFUSALS + 1 {
            assert!(!core.is_live(), "attempt {attempt}");
            if effects.retry.take().is_some() {
                core.on_retry_due(&mut effects);
            }
            answer(&mut core, &mut effects, found(8, &["a", "b"]));
        }
        assert!(core.is_live(), "given up until the next tip");
        assert_eq!(rendered(&core), rendered_of(found(8, &["a", "b"])));
        assert_eq!(effects.requests, 1 + MAX_STALE_REFUSALS + 1);
        // The owner's next tip tries again, spaced out since its tips went unexplained.
        core.on_tip(9, &mut effects);
        assert!(!core.is_live());
        assert!(effects.retry.is_some_and(|delay| delay > Duration::ZERO));
    }

    fn rendered_of(reply: Reply<TaskView>) -> String {
        let Reply::Found(_, view) = reply else {
            unreachable!()
        };
        String::from_utf8(view.render(&())).unwrap()
    }

    #[test]
    fn an_event_chained_to_a_rev_the_view_never_took_takes_a_snapshot_instead_of_applying() {
        let (mut core, mut effects) = live(5, &["a"]);
        // Rev 6 (a replace to ["x"]) was lost on the way; rev 7 appends at index 1, which would
        // fit the view and leave it ["a", "c"] for good.
        let mut chained = append(7, 1, "c");
        chained.prev_rev = Some(6);
        core.on_event(chained, 10, &mut effects);
        assert_eq!(
            effects.requests, 2,
            "a prev_rev above the held rev means a lost event"
        );
        assert_eq!(
            rendered(&core),
            rendered_of(found(5, &["a"])),
            "the old view serves meanwhile"
        );
        assert_eq!(
            effects.forwarded,
            vec![7],
            "broadcast members still get it as it arrived"
        );
        answer(&mut core, &mut effects, found(7, &["x", "c"]));
        assert!(core.is_live());
        assert_eq!(rendered(&core), rendered_of(found(7, &["x", "c"])));
        assert!(effects.rejected.is_empty(), "{:?}", effects.rejected);

        // Chained to what the view holds, or to less (another replica's rev), it applies.
        let mut next = append(8, 2, "d");
        next.prev_rev = Some(7);
        core.on_event(next, 10, &mut effects);
        let mut other_replica = append(9, 3, "e");
        other_replica.prev_rev = Some(3);
        core.on_event(other_replica, 10, &mut effects);
        assert_eq!(effects.requests, 2);
        assert_eq!(
            rendered(&core),
            rendered_of(found(9, &["x", "c", "d", "e"]))
        );
    }

    #[test]
    fn stale_events_in_a_row_take_a_snapshot_but_not_with_an_applied_one_between() {
        let (mut core, mut effects) = live(10, &["a"]);
        core.on_event(append(4, 0, "x"), 10, &mut effects);
        core.on_event(append(5, 0, "x"), 10, &mut effects);
        core.on_event(append(11, 1, "b"), 10, &mut effects);
        core.on_event(append(6, 0, "x"), 10, &mut effects);
        assert_eq!((effects.requests, effects.stale), (1, 3));
        core.on_event(append(7, 0, "x"), 10, &mut effects);
        core.on_event(append(8, 0, "x"), 10, &mut effects);
        assert_eq!(
            effects.requests, 2,
            "three stale events in a row: the owner's store may have gone back"
        );
    }

    #[test]
    fn an_owner_that_went_back_is_believed_after_refusals_and_broadcast_restarts_from_its_rev() {
        let (mut core, mut effects) = live(10, &["a", "b"]);
        core.on_event(append(12, 2, "c"), 10, &mut effects);
        assert_eq!(effects.forwarded, vec![12]);
        core.on_lost(&mut effects);
        for refusal in 1..=MAX_STALE_REFUSALS {
            answer(&mut core, &mut effects, found(5, &["a"]));
            assert!(!core.is_live(), "refusal {refusal}");
            core.on_retry_due(&mut effects);
        }
        answer(&mut core, &mut effects, found(5, &["a"]));
        assert!(core.is_live());
        assert_eq!(core.view_rev(), Some(5));
        assert_eq!(rendered(&core), rendered_of(found(5, &["a"])));
        // The owner goes on from its rev: its events reach broadcast members again.
        core.on_event(append(6, 1, "b2"), 10, &mut effects);
        assert_eq!(effects.forwarded, vec![12, 6]);
        assert_eq!(rendered(&core), rendered_of(found(6, &["a", "b2"])));
    }

    #[test]
    fn a_key_that_vanishes_is_told_once_and_may_come_back() {
        let (mut core, mut effects) = live(3, &["a"]);
        core.on_lost(&mut effects);
        answer(&mut core, &mut effects, Reply::NotFound);
        assert_eq!(effects.vanished, 1);
        assert!(!core.view().unwrap().exists());
        core.on_lost(&mut effects);
        answer(&mut core, &mut effects, Reply::NotFound);
        assert_eq!(effects.vanished, 1, "told once, not at every snapshot");
        core.on_event(append(4, 0, "again"), 10, &mut effects);
        assert!(core.view().unwrap().exists());
        assert_eq!(rendered(&core), rendered_of(found(4, &["again"])));
    }

    #[test]
    fn a_key_never_known_is_not_a_vanished_one() {
        let mut core = SyncCore::<TaskView>::new("t".into());
        let mut effects = Recorder::default();
        core.start(&mut effects);
        answer(&mut core, &mut effects, Reply::NotFound);
        assert_eq!(effects.vanished, 0);
        assert_eq!(effects.outcomes, vec!["not_found"]);
    }

    #[test]
    fn failures_back_off_and_a_loss_notice_goes_at_once() {
        let mut core = SyncCore::<TaskView>::new("t".into());
        let mut effects = Recorder::default();
        core.start(&mut effects);
        answer(&mut core, &mut effects, Reply::Failed("timeout"));
        assert_eq!(effects.retry, Some(retry_delay(1)));
        assert!(core.is_failing());
        core.on_lost(&mut effects);
        assert!(
            effects.outstanding,
            "the cause may be gone: asked again at once"
        );
        answer(&mut core, &mut effects, found(1, &["a"]));
        assert!(core.is_live() && !core.is_failing());
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(1), Duration::from_millis(250));
        assert_eq!(retry_delay(2), Duration::from_millis(500));
        assert_eq!(retry_delay(4), Duration::from_secs(2));
        assert_eq!(retry_delay(20), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_remembers_their_revs() {
        let mut loading = Loading::new();
        for rev in 1..=(MAX_BUFFERED_EVENTS as u64 + 5) {
            loading.buffer((), rev, 10);
        }
        assert_eq!(loading.buffer.len(), MAX_BUFFERED_EVENTS);
        assert_eq!(loading.dropped_rev, Some(5));
        assert_eq!(loading.buffer.front().map(|b| b.rev), Some(6));

        let mut by_bytes = Loading::new();
        by_bytes.buffer((), 1, MAX_BUFFERED_BYTES / 2);
        by_bytes.buffer((), 2, MAX_BUFFERED_BYTES / 2);
        by_bytes.buffer((), 3, 1);
        assert_eq!(by_bytes.dropped_rev, Some(1));
        assert_eq!(by_bytes.buffered_bytes, MAX_BUFFERED_BYTES / 2 + 1);
        // One event larger than the whole budget is still kept, alone.
        by_bytes.buffer((), 4, MAX_BUFFERED_BYTES * 2);
        assert_eq!(by_bytes.buffer.len(), 1);
        assert_eq!(by_bytes.dropped_rev, Some(3));
    }
}

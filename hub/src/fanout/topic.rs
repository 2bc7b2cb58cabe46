//! One watched key: its broker subscription, its view, and the connections watching it.
//!
//! A topic is a task that alone owns its state, so events for one key apply in order and the view
//! needs no lock. It keeps the view in step with the owner by SPEC 3's rule: subscribe first,
//! buffer events, request a snapshot, then apply the buffered and later events whose rev is above
//! the snapshot's. Lost messages (a reconnect, a slow consumer) or a gap in a task's results start
//! the same cycle again while the old view keeps serving.
//!
//! Realtime members are grouped by filter and interval. A group has one timer; on each tick it
//! renders its filter once (only if the view changed since the last render) and shares that frame
//! with every member whose last state is different and at least one interval old.
//!
//! Broadcast members get every event once, as it arrives, even while the view waits for a
//! snapshot; an event whose rev is not above the last one forwarded is a late duplicate.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;

use tokio::time::{sleep, Instant, Sleep};

use super::mailbox::Receiver;
use super::member::{Delivery, Member, MemberId, Mode, Outbox};
use super::registry::{Command, Departure, TopicContext};
use crate::broker::{BrokerError, Subscription};
use crate::messages::{Envelope, Frame};
use crate::view::{self, Applied, View};

/// Events kept while a snapshot is on its way, by count and by payload bytes; past either, the
/// oldest are dropped, and a snapshot that does not cover them is followed by another.
const MAX_BUFFERED_EVENTS: usize = 10_000;
const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;

/// First wait before retrying a failed snapshot; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// A state stamped this recently is shared as it is (e.g. by every member that joined while the
/// first snapshot was on its way) rather than copied with a new timestamp.
const STAMP_REUSE: Duration = Duration::from_millis(100);

/// A tick this late is a stall, not timer jitter.
const LATE_TICK: Duration = Duration::from_millis(100);

/// Refusals of a snapshot older than the view before it is believed: an owner whose revs went
/// back (a restored database) must not freeze the view for good.
const MAX_STALE_REFUSALS: u32 = 3;

/// Realtime members that share a filter and an interval, and so a timer and a render.
type GroupKey<F> = (F, Duration);

/// A watched key's task.
pub struct Topic<V: View> {
    /// The task record id or scene id, as clients and publishers spell it.
    id: String,
    /// The pre-escaped parts of every message about this key.
    envelope: Envelope,
    /// Broker, subjects, settings, metrics.
    context: Arc<TopicContext>,
    /// Removes this topic from the registry when its last member leaves.
    departure: Departure<V::Filter>,
    /// Joins, leaves, status requests and resnapshot orders.
    commands: Receiver<Command<V::Filter>>,
    /// The key's events; `None` until subscribed (and again if the broker closed it).
    events: Option<Subscription>,
    /// The state; `None` until the first snapshot answered (found or not).
    view: Option<V>,
    /// The rev of the last event the view reflects; `None` before any (a key not found).
    view_rev: Option<u64>,
    /// Bumped on every change to the view, so renders know when they are stale.
    version: u64,
    /// The highest rev sent to broadcast members.
    forwarded_rev: Option<u64>,
    /// Whether the view is live or waiting for a snapshot.
    sync: Sync<V::Event>,
    /// Snapshots in a row that did not cover a gap; spaces out the next ones.
    gaps: u32,
    /// Everyone watching, by membership id.
    members: HashMap<MemberId, Watcher<V::Filter>>,
    /// Realtime members by filter and interval.
    groups: HashMap<GroupKey<V::Filter>, Group>,
    /// One render per distinct filter, shared by every group with that filter.
    renders: HashMap<V::Filter, Render>,
    /// Causes already logged at warn level, so a broken publisher cannot flood the log.
    warned: HashSet<&'static str>,
    /// The counter of broker messages for this key's kind, looked up once rather than per event.
    received: Counter,
}

/// Where the view stands with the owner.
enum Sync<E> {
    /// Events apply as they arrive.
    Live,
    /// A snapshot is requested or due; events wait in the buffer.
    Loading(Loading<E>),
}

struct Loading<E> {
    /// Events that arrived since loading began, in order.
    buffer: VecDeque<Buffered<E>>,
    /// Payload bytes of the buffered events.
    buffered_bytes: usize,
    /// The highest rev dropped from a full buffer: a snapshot older than it is not enough.
    dropped_rev: Option<u64>,
    /// Failed attempts in a row; sets the retry delay.
    failures: u32,
    /// The request on its way, if one is.
    request: Option<BoxFuture<'static, Result<Bytes, BrokerError>>>,
    /// When to send the next request, when none is on its way.
    retry: Option<Pin<Box<Sleep>>>,
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
    rev: u64,
    size: usize,
    event: E,
}

impl<E> Loading<E> {
    /// Loading that sends its request after `delay`.
    fn after(delay: Duration) -> Self {
        Self {
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            dropped_rev: None,
            failures: 0,
            request: None,
            retry: Some(Box::pin(sleep(delay))),
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

/// One member and what it has been sent.
struct Watcher<F> {
    /// Where its frames go.
    outbox: Outbox,
    /// Broadcast, or realtime with its filter and interval.
    mode: Mode<F>,
    /// It is owed a state (its first, or an answer to `get_status`) not given yet.
    pending: bool,
    /// It was told the state is unavailable during the current outage.
    told_unavailable: bool,
    /// Hash of the last state it was sent, for "only when changed".
    last_sent: Option<u64>,
    /// No periodic update before this (one interval after the last).
    next_update: Instant,
    /// Cleared when its status request is taken up, so the next one is sent.
    status_requested: Arc<AtomicBool>,
}

/// The realtime members of one filter and interval.
struct Group {
    members: HashSet<MemberId>,
    /// When the group is next due. A topic has a handful of groups at most, so the earliest
    /// is found by looking at each; a timing wheel (`DelayQueue`) would allocate 6 KB per
    /// watched key up front.
    next_tick: Instant,
}

/// A filtered state rendered once for every member with the same filter.
struct Render {
    /// The topic version it was rendered at.
    version: u64,
    /// Hash of `data`: equal hashes mean nothing a member sees changed.
    hash: u64,
    /// The state message's `data`.
    data: Bytes,
    /// The last state message made of `data`, and when it was stamped.
    stamped: Option<(Instant, Frame)>,
}

impl Render {
    /// A state message of this render, stamped now unless one was stamped a moment ago.
    fn frame(&mut self, envelope: &Envelope) -> Frame {
        let now = Instant::now();
        match &self.stamped {
            Some((at, frame)) if now.duration_since(*at) < STAMP_REUSE => frame.clone(),
            _ => {
                let frame = envelope.state(&self.data);
                self.stamped = Some((now, frame.clone()));
                frame
            }
        }
    }
}

impl<V: View> Topic<V> {
    pub(super) fn new(
        id: String,
        context: Arc<TopicContext>,
        departure: Departure<V::Filter>,
        commands: Receiver<Command<V::Filter>>,
    ) -> Self {
        let received = context.metrics.broker_messages_counter(V::KIND.label());
        Self {
            envelope: Envelope::new(V::KIND, &id),
            id,
            context,
            departure,
            commands,
            events: None,
            view: None,
            view_rev: None,
            version: 0,
            forwarded_rev: None,
            sync: Sync::Loading(Loading::after(Duration::ZERO)),
            gaps: 0,
            members: HashMap::new(),
            groups: HashMap::new(),
            renders: HashMap::new(),
            warned: HashSet::new(),
            received,
        }
    }

    /// Serves the key until its last member leaves.
    pub async fn run(mut self) {
        let kind = V::KIND.label();
        tracing::debug!(kind, id = %self.id, "watching");
        self.request_snapshot().await;
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { break };
                    if self.on_command(command).await == Continue::Stop {
                        break;
                    }
                }
                payload = next_event(&mut self.events) => match payload {
                    Some(payload) => {
                        self.received.inc();
                        self.on_event(&payload);
                    }
                    None => {
                        tracing::warn!(kind, id = %self.id, "subscription ended; resubscribing");
                        self.events = None;
                        self.context.metrics.subscriptions.dec();
                        self.resnapshot().await;
                    }
                },
                step = snapshot_step(&mut self.sync) => match step {
                    SnapshotStep::Replied(reply) => self.on_snapshot(reply),
                    SnapshotStep::RetryDue => self.request_snapshot().await,
                },
                () = sleep_until_earliest(&self.groups), if !self.groups.is_empty() => {
                    self.on_due_ticks();
                }
            }
        }
        if self.events.is_some() {
            self.context.metrics.subscriptions.dec();
        }
        tracing::debug!(kind, id = %self.id, "no longer watched");
    }

    async fn on_command(&mut self, command: Command<V::Filter>) -> Continue {
        match command {
            Command::Join(member) => self.join(member),
            Command::GetStatus(id) => {
                if let Some(watcher) = self.members.get_mut(&id) {
                    watcher.status_requested.store(false, Ordering::Release);
                    watcher.pending = true;
                    self.deliver_state(id, true, Instant::now());
                }
            }
            Command::Leave(id) => {
                self.leave(id);
                if self.departure.leave_if_unwatched(&self.id) {
                    return Continue::Stop;
                }
            }
            Command::Resnapshot => self.resnapshot().await,
        }
        Continue::Go
    }

    fn join(&mut self, member: Member<V::Filter>) {
        let realtime = match &member.mode {
            Mode::Realtime { filter, interval } => {
                let key = (filter.clone(), *interval);
                self.groups
                    .entry(key.clone())
                    .or_insert_with(|| Group {
                        members: HashSet::new(),
                        next_tick: Instant::now() + *interval,
                    })
                    .members
                    .insert(member.id);
                true
            }
            Mode::Broadcast => false,
        };
        let watcher = Watcher {
            outbox: member.outbox,
            mode: member.mode,
            pending: realtime,
            told_unavailable: false,
            last_sent: None,
            next_update: Instant::now(),
            status_requested: member.status_requested,
        };
        self.members.insert(member.id, watcher);
        self.deliver_state(member.id, false, Instant::now());
    }

    fn leave(&mut self, id: MemberId) {
        let Some(watcher) = self.members.remove(&id) else {
            return;
        };
        let Mode::Realtime { filter, interval } = watcher.mode else {
            return;
        };
        let key = (filter, interval);
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        group.members.remove(&id);
        if group.members.is_empty() {
            self.groups.remove(&key);
            if !self.groups.keys().any(|(other, _)| *other == key.0) {
                self.renders.remove(&key.0);
            }
        }
    }

    /// Sends member `id` the state it is owed or, while there is none, why not: once per outage,
    /// and to every `get_status` (`asked`). `now` is shared by members served together, so that
    /// their periodic updates fall due on the same tick.
    fn deliver_state(&mut self, id: MemberId, asked: bool, now: Instant) {
        let clock_in_use = self.group_clock_in_use(id);
        let Some(watcher) = self.members.get_mut(&id) else {
            return;
        };
        if !watcher.pending {
            return;
        }
        let Some(view) = &self.view else {
            let failing = matches!(&self.sync, Sync::Loading(l) if l.failures > 0);
            if failing && (asked || !watcher.told_unavailable) {
                watcher.told_unavailable = true;
                watcher
                    .outbox
                    .offer(self.envelope.error(V::KIND.unavailable_message()));
            }
            return;
        };
        watcher.pending = false;
        watcher.told_unavailable = false;
        if !view.exists() {
            watcher.last_sent = None;
            watcher
                .outbox
                .offer(self.envelope.error(&V::KIND.not_found_message(&self.id)));
            return;
        }
        match &watcher.mode {
            Mode::Realtime { filter, interval } => {
                let Some(render) = render(&mut self.renders, view, self.version, filter) else {
                    return;
                };
                watcher.outbox.offer_state(render.frame(&self.envelope));
                if watcher.last_sent.is_none() {
                    watcher.next_update = now + *interval;
                    // The first state of a group sets its clock, so its first periodic update
                    // comes one interval later, not up to two; a clock others wait on stays.
                    if !clock_in_use {
                        if let Some(group) = self.groups.get_mut(&(filter.clone(), *interval)) {
                            group.next_tick = now + *interval;
                        }
                    }
                }
                watcher.last_sent = Some(render.hash);
            }
            // Broadcast members ask rarely, so their render is not kept.
            Mode::Broadcast => {
                let data = view.render(&V::Filter::default());
                watcher.outbox.offer_state(self.envelope.state(&data));
            }
        }
    }

    /// Gives every member that is owed the state what there is: the state, or word of why not.
    fn deliver_owed_states(&mut self) {
        let owed: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, w)| w.pending)
            .map(|(id, _)| *id)
            .collect();
        let now = Instant::now();
        for id in owed {
            self.deliver_state(id, false, now);
        }
    }

    /// Whether another member of `id`'s realtime group waits on the group's clock: any that
    /// is past its first delivery (it got a state, or word that the key is not found).
    fn group_clock_in_use(&self, id: MemberId) -> bool {
        let Some(Mode::Realtime { filter, interval }) = self.members.get(&id).map(|w| &w.mode)
        else {
            return false;
        };
        self.groups
            .get(&(filter.clone(), *interval))
            .is_some_and(|group| {
                group.members.iter().any(|other| {
                    *other != id && self.members.get(other).is_some_and(|w| !w.pending)
                })
            })
    }

    /// Every group whose tick has come, in the order they fell due.
    fn on_due_ticks(&mut self) {
        let now = Instant::now();
        let mut due: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, group)| group.next_tick <= now)
            .map(|(key, group)| (group.next_tick, key.clone()))
            .collect();
        due.sort_by_key(|(deadline, _)| *deadline);
        for (deadline, key) in due {
            self.on_tick(key, deadline);
        }
    }

    /// A group's tick, scheduled for `deadline`: members whose view changed and whose interval
    /// has passed get the state, rendered and stamped once for all of them.
    fn on_tick(&mut self, key: GroupKey<V::Filter>, deadline: Instant) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        let (filter, interval) = &key;
        // Ticks keep to their schedule, so "an interval since the last update" compares
        // schedule with schedule, with no slack for timer jitter.
        // A tick that fires late by more than timer jitter (a stalled task) moves the group's
        // clock to now, so the next update is a whole interval away and missed ticks do not
        // fire in a burst.
        let now = Instant::now();
        let next_tick = if now > deadline + LATE_TICK {
            now + *interval
        } else {
            deadline + *interval
        };
        group.next_tick = next_tick;
        let Some(view) = self.view.as_ref().filter(|view| view.exists()) else {
            return;
        };
        let Some(render) = render(&mut self.renders, view, self.version, filter) else {
            return;
        };
        let mut frame: Option<Frame> = None;
        for id in &group.members {
            let Some(watcher) = self.members.get_mut(id) else {
                continue;
            };
            if watcher.last_sent == Some(render.hash) || watcher.next_update > deadline {
                continue;
            }
            let frame = frame.get_or_insert_with(|| render.frame(&self.envelope));
            watcher.outbox.offer_state(frame.clone());
            watcher.last_sent = Some(render.hash);
            watcher.next_update = next_tick;
        }
    }

    fn on_event(&mut self, payload: &[u8]) {
        let event = match view::parse_event::<V>(&self.id, payload) {
            Ok(event) => event,
            Err(error) => return self.reject(error.cause(), &error),
        };
        let rev = V::event_rev(&event);
        let mut frames = None;
        if self.forwarded_rev.is_none_or(|forwarded| rev > forwarded) {
            self.forwarded_rev = Some(rev);
            let mut broadcast = self
                .members
                .values()
                .filter(|w| matches!(w.mode, Mode::Broadcast))
                .peekable();
            if broadcast.peek().is_some() {
                let rendered = V::event_frames(&self.envelope, &event);
                for watcher in broadcast {
                    for frame in &rendered {
                        watcher.outbox.offer_or_close(frame.clone());
                    }
                }
                frames = Some(rendered);
            }
        }
        if let Sync::Loading(loading) = &mut self.sync {
            loading.buffer(event, rev, payload.len());
        } else if let Err(event) = self.apply(event, frames) {
            // At once, unless recent gaps went unexplained: then the publisher is at fault.
            let delay = match self.gaps {
                0 => Duration::ZERO,
                gaps => retry_delay(gaps),
            };
            tracing::info!(kind = V::KIND.label(), id = %self.id, rev, ?delay, "missed events; taking a fresh snapshot");
            let mut loading = Loading::after(delay);
            loading.buffer(event, rev, payload.len());
            self.sync = Sync::Loading(loading);
        }
    }

    /// Applies one event to the view and tells realtime members that hear of it at once.
    /// `frames` are the event's broadcast frames if already rendered. Gives the event back
    /// when it shows a gap: the view needs a snapshot before it can take it.
    fn apply(&mut self, event: V::Event, frames: Option<Vec<Frame>>) -> Result<(), V::Event> {
        let rev = V::event_rev(&event);
        let Some(view) = self.view.as_mut() else {
            return Ok(());
        };
        if self.view_rev.is_some_and(|held| rev <= held) {
            self.context.metrics.events_stale.inc();
            return Ok(());
        }
        match view.apply(&event) {
            Applied::Changed(notice) => {
                self.view_rev = Some(rev);
                self.version += 1;
                let Some(notice) = notice else {
                    return Ok(());
                };
                let mut frames = frames;
                for ((filter, _), group) in &self.groups {
                    if !V::notice_reaches(&notice, filter) {
                        continue;
                    }
                    let frames =
                        frames.get_or_insert_with(|| V::event_frames(&self.envelope, &event));
                    for id in &group.members {
                        // A member that has no state yet will see this in its first one.
                        let Some(watcher) = self.members.get_mut(id) else {
                            continue;
                        };
                        if watcher.last_sent.is_some() {
                            for frame in frames.iter() {
                                if watcher.outbox.offer_notice(frame.clone()) == Delivery::Full {
                                    // Its next state, which the writer puts before the changes
                                    // it covers, must go out even if nothing else changes.
                                    watcher.last_sent = None;
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
            Applied::Gap => Err(event),
            Applied::Ignored(cause) => {
                self.reject(cause, &format_args!("event rev {rev} does not apply"));
                Ok(())
            }
        }
    }

    fn on_snapshot(&mut self, reply: Result<Bytes, BrokerError>) {
        let kind = V::KIND.label();
        let refusals = match &self.sync {
            Sync::Loading(loading) => loading.stale_refusals,
            Sync::Live => 0,
        };
        let parsed = match reply {
            Ok(payload) => match view::parse_snapshot::<V>(&self.id, &payload) {
                Ok(Some((rev, _)))
                    if self.view_rev.is_some_and(|held| rev < held)
                        && refusals < MAX_STALE_REFUSALS =>
                {
                    Err("stale_snapshot")
                }
                Ok(snapshot) => Ok(snapshot),
                Err(error) => {
                    self.reject(error.cause(), &error);
                    Err("malformed")
                }
            },
            Err(BrokerError::NoResponders) => Err("no_responders"),
            Err(BrokerError::TimedOut) => Err("timeout"),
            Err(BrokerError::Unavailable(_)) => Err("unavailable"),
        };
        let Sync::Loading(loading) = &mut self.sync else {
            return;
        };
        loading.request = None;
        let snapshot = match parsed {
            Ok(snapshot) => snapshot,
            Err(reason) => {
                self.context.metrics.snapshot(kind, reason);
                if reason == "stale_snapshot" {
                    loading.stale_refusals += 1;
                }
                loading.failures += 1;
                let delay = retry_delay(loading.failures);
                loading.retry = Some(Box::pin(sleep(delay)));
                if loading.failures == 1 {
                    tracing::warn!(kind, id = %self.id, reason, "snapshot failed; retrying with backoff");
                } else {
                    tracing::debug!(kind, id = %self.id, reason, failures = loading.failures, ?delay, "snapshot failed again");
                }
                self.deliver_owed_states();
                return;
            }
        };
        let found = if snapshot.is_some() {
            "found"
        } else {
            "not_found"
        };
        self.context.metrics.snapshot(kind, found);
        let Sync::Loading(loading) = std::mem::replace(&mut self.sync, Sync::Live) else {
            return;
        };
        if loading.stale_refusals >= MAX_STALE_REFUSALS {
            tracing::warn!(kind, id = %self.id, held = ?self.view_rev, "the owner's rev went back; believing its snapshot");
        }
        let (snapshot_rev, view) = match snapshot {
            Some((rev, view)) => (Some(rev), view),
            None => (None, V::default()),
        };
        self.view = Some(view);
        self.view_rev = snapshot_rev;
        self.version += 1;
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
            if let Err(event) = self.apply(buffered.event, None) {
                gap = true;
                if arrival >= loading.arrivals_at_request {
                    let mut again = Loading::after(retry_delay(self.gaps + 1));
                    again.buffer(event, rev, size);
                    waiting = Some(again);
                } else {
                    let detail = format_args!("event rev {rev} does not fit the snapshot");
                    self.reject("gap", &detail);
                }
            }
        }
        self.gaps = if gap { self.gaps + 1 } else { 0 };
        let uncovered = loading
            .dropped_rev
            .is_some_and(|dropped| snapshot_rev.is_none_or(|rev| dropped > rev));
        if let Some(waiting) = waiting {
            tracing::info!(kind, id = %self.id, "an event newer than the snapshot shows a gap; taking another");
            self.sync = Sync::Loading(waiting);
        } else if uncovered || loading.again {
            tracing::info!(kind, id = %self.id, uncovered, "taking another snapshot");
            self.sync = Sync::Loading(Loading::after(Duration::ZERO));
        }
        self.deliver_owed_states();
    }

    /// Events may have been lost: take a fresh snapshot, keeping the view to serve meanwhile.
    /// A request already on its way is kept (cancelling it would starve the topic under a storm
    /// of notices) and followed by one more.
    async fn resnapshot(&mut self) {
        match &mut self.sync {
            Sync::Live => self.sync = Sync::Loading(Loading::after(Duration::ZERO)),
            Sync::Loading(loading) if loading.request.is_some() => {
                loading.again = true;
                return;
            }
            // Waiting to retry: the cause of the failures may be gone, so go now.
            Sync::Loading(loading) => loading.failures = 0,
        }
        self.request_snapshot().await;
    }

    /// Subscribes if needed, then sends a snapshot request.
    async fn request_snapshot(&mut self) {
        let Sync::Loading(loading) = &mut self.sync else {
            return;
        };
        loading.retry = None;
        loading.again = false;
        loading.arrivals_at_request = loading.arrivals;
        let context = &self.context;
        if self.events.is_none() {
            let subject = view::event_subject(V::KIND, &context.subjects, &self.id);
            match context.broker.subscribe(subject).await {
                Ok(subscription) => {
                    self.events = Some(subscription);
                    context.metrics.subscriptions.inc();
                }
                Err(error) => {
                    loading.failures += 1;
                    loading.retry = Some(Box::pin(sleep(retry_delay(loading.failures))));
                    tracing::warn!(kind = V::KIND.label(), id = %self.id, %error, "cannot subscribe; retrying");
                    return;
                }
            }
        }
        let broker = context.broker.clone();
        let metrics = context.metrics.clone();
        let subject = view::snapshot_subject(V::KIND, &context.subjects, &self.id);
        let timeout = context.snapshot_timeout;
        loading.request = Some(Box::pin(async move {
            let started = std::time::Instant::now();
            let reply = broker.request(subject, timeout).await;
            metrics.snapshot_took(V::KIND.label(), started.elapsed());
            reply
        }));
    }

    fn reject(&mut self, cause: &'static str, detail: &dyn std::fmt::Display) {
        let kind = V::KIND.label();
        self.context.metrics.rejected(kind, cause);
        if self.warned.insert(cause) {
            tracing::warn!(kind, id = %self.id, cause, %detail, "refused a payload (further ones of this cause are logged at debug)");
        } else {
            tracing::debug!(kind, id = %self.id, cause, %detail, "refused a payload");
        }
    }
}

#[derive(PartialEq)]
enum Continue {
    Go,
    Stop,
}

/// The render of `filter` at `version`, rendering it if the one held is older. (`None` cannot
/// happen; it spares the hot path a clone of the filter per call.)
fn render<'a, V: View>(
    renders: &'a mut HashMap<V::Filter, Render>,
    view: &V,
    version: u64,
    filter: &V::Filter,
) -> Option<&'a mut Render> {
    let render = if renders.contains_key(filter) {
        renders.get_mut(filter)?
    } else {
        renders.entry(filter.clone()).or_insert(Render {
            version: 0,
            hash: 0,
            data: Bytes::new(),
            stamped: None,
        })
    };
    if render.version != version || render.data.is_empty() {
        let data = view.render(filter);
        let mut hasher = DefaultHasher::new();
        data.hash(&mut hasher);
        let hash = hasher.finish();
        if hash != render.hash || render.data.is_empty() {
            render.data = Bytes::from(data);
            render.hash = hash;
            render.stamped = None;
        }
        render.version = version;
    }
    Some(render)
}

fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.pow(exponent))
        .min(MAX_RETRY_DELAY)
}

/// Resolves when the earliest group is due.
async fn sleep_until_earliest<K>(groups: &HashMap<K, Group>) {
    match groups.values().map(|group| group.next_tick).min() {
        Some(earliest) => tokio::time::sleep_until(earliest).await,
        None => std::future::pending().await,
    }
}

async fn next_event(events: &mut Option<Subscription>) -> Option<Bytes> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// What the snapshot cycle has to say next.
enum SnapshotStep {
    /// The request on its way finished.
    Replied(Result<Bytes, BrokerError>),
    /// The wait before the next request is over.
    RetryDue,
}

/// Resolves when the snapshot request replies or the next one falls due; never while live.
async fn snapshot_step<E>(sync: &mut Sync<E>) -> SnapshotStep {
    match sync {
        Sync::Loading(Loading {
            request: Some(request),
            ..
        }) => SnapshotStep::Replied(request.await),
        Sync::Loading(Loading {
            retry: Some(retry), ..
        }) => {
            retry.await;
            SnapshotStep::RetryDue
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(1), Duration::from_millis(250));
        assert_eq!(retry_delay(2), Duration::from_millis(500));
        assert_eq!(retry_delay(4), Duration::from_secs(2));
        assert_eq!(retry_delay(20), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }

    #[tokio::test]
    async fn a_full_buffer_drops_the_oldest_and_remembers_their_revs() {
        let mut loading = Loading::after(Duration::ZERO);
        for rev in 1..=(MAX_BUFFERED_EVENTS as u64 + 5) {
            loading.buffer((), rev, 10);
        }
        assert_eq!(loading.buffer.len(), MAX_BUFFERED_EVENTS);
        assert_eq!(loading.dropped_rev, Some(5));
        assert_eq!(loading.buffer.front().map(|b| b.rev), Some(6));

        let mut by_bytes = Loading::after(Duration::ZERO);
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

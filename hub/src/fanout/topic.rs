//! One watched key's task: the I/O around its [`SyncCore`], and the connections watching it.
//!
//! A topic is a task that alone owns its state, so events for one key apply in order and the view
//! needs no lock. What the view does with events, tips and snapshots is the sync core's
//! (`sync.rs`, a state machine with no I/O); this task subscribes, sends the requests the core
//! asks for, keeps its timers, and carries out what the core decides for the members. It never
//! waits on the broker in its loop: subscribing and requesting are futures it polls beside
//! everything else, so joins, leaves and `get_status` are served while NATS is slow.
//!
//! Realtime members are grouped by filter and interval. A group has one timer; on each tick it
//! renders its filter once (only if the view changed since the last render) and shares that frame
//! with every member whose last state is different and at least one interval old.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
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
use super::sync::{Effects, Reply, SyncCore};
use crate::broker::{BrokerError, Received, Subscription};
use crate::messages::{Envelope, Frame};
use crate::view::{self, Incoming, View};

/// A state stamped this recently is shared as it is (e.g. by every member that joined while the
/// first snapshot was on its way) rather than copied with a new timestamp.
const STAMP_REUSE: Duration = Duration::from_millis(100);

/// A tick this late is a stall, not timer jitter.
const LATE_TICK: Duration = Duration::from_millis(100);

/// Realtime members that share a filter and an interval, and so a timer and a render.
type GroupKey<F> = (F, Duration);

/// A watched key's task.
pub struct Topic<V: View> {
    /// Where the view stands with the owner: the decisions.
    core: SyncCore<V>,
    /// Everything else: the broker, the timers, the members.
    shell: Shell<V>,
}

/// The I/O and the members around a topic's core; carries out its [`Effects`].
struct Shell<V: View> {
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
    /// A subscription on its way; a snapshot request follows it.
    subscribing: Option<BoxFuture<'static, Result<Subscription, BrokerError>>>,
    /// The snapshot request on its way.
    request: Option<BoxFuture<'static, Result<Bytes, BrokerError>>>,
    /// When the core wants [`SyncCore::on_retry_due`].
    retry: Option<Pin<Box<Sleep>>>,
    /// Everyone watching, by membership id.
    members: HashMap<MemberId, Watcher<V::Filter>>,
    /// Realtime members by filter and interval.
    groups: HashMap<GroupKey<V::Filter>, Group>,
    /// One render per distinct filter, shared by every group with that filter.
    renders: HashMap<V::Filter, Render>,
    /// The broadcast frames of the event being handled, so realtime notices of the same event
    /// reuse them instead of rendering it again.
    event_frames: Option<Vec<Frame>>,
    /// Causes already logged at warn level, so a broken publisher cannot flood the log.
    warned: HashSet<&'static str>,
    /// The counter of broker messages for this key's kind, looked up once rather than per event.
    received: Counter,
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
            core: SyncCore::new(id.clone()),
            shell: Shell {
                envelope: Envelope::new(V::KIND, &id),
                id,
                context,
                departure,
                commands,
                events: None,
                subscribing: None,
                request: None,
                retry: None,
                members: HashMap::new(),
                groups: HashMap::new(),
                renders: HashMap::new(),
                event_frames: None,
                warned: HashSet::new(),
                received,
            },
        }
    }

    /// Serves the key until its last member leaves.
    pub async fn run(mut self) {
        let kind = V::KIND.label();
        tracing::debug!(kind, id = %self.shell.id, "watching");
        let Self { core, shell } = &mut self;
        core.start(shell);
        loop {
            tokio::select! {
                command = shell.commands.recv() => {
                    let Some(command) = command else { break };
                    if shell.on_command(command, core) == Continue::Stop {
                        break;
                    }
                }
                received = next_event(&mut shell.events) => match received {
                    Some(Received::Message(payload)) => {
                        shell.received.inc();
                        shell.on_payload(&payload, core);
                    }
                    Some(Received::Lost) => {
                        tracing::info!(kind, id = %shell.id, "NATS dropped events of this key; re-snapshotting");
                        core.on_lost(shell);
                    }
                    None => {
                        tracing::warn!(kind, id = %shell.id, "subscription ended; resubscribing");
                        shell.events = None;
                        shell.context.metrics.subscriptions.dec();
                        core.on_lost(shell);
                    }
                },
                subscribed = poll_slot(&mut shell.subscribing) => match subscribed {
                    Ok(subscription) => {
                        shell.events = Some(subscription);
                        shell.context.metrics.subscriptions.inc();
                        shell.send_request();
                    }
                    Err(error) => {
                        tracing::warn!(kind, id = %shell.id, %error, "cannot subscribe; retrying");
                        core.on_reply(Reply::Failed("unavailable"), shell);
                    }
                },
                reply = poll_slot(&mut shell.request) => {
                    let reply = shell.read_reply(reply);
                    core.on_reply(reply, shell);
                }
                () = poll_sleep(&mut shell.retry) => core.on_retry_due(shell),
                () = sleep_until_earliest(&shell.groups), if !shell.groups.is_empty() => {
                    shell.on_due_ticks(core);
                }
            }
        }
        if shell.events.is_some() {
            shell.context.metrics.subscriptions.dec();
        }
        tracing::debug!(kind, id = %shell.id, "no longer watched");
    }
}

impl<V: View> Effects<V> for Shell<V> {
    fn request_snapshot(&mut self) {
        if self.events.is_some() {
            self.send_request();
            return;
        }
        // Subscribe first, so that no event published after the snapshot is missed; the request
        // goes out once the subscription is in place.
        let broker = self.context.broker.clone();
        let subject = view::event_subject(V::KIND, &self.context.subjects, &self.id);
        self.subscribing = Some(Box::pin(async move { broker.subscribe(subject).await }));
    }

    fn retry_in(&mut self, delay: Duration) {
        self.retry = Some(Box::pin(sleep(delay)));
    }

    fn forward(&mut self, event: &V::Event) {
        let mut broadcast = self
            .members
            .values()
            .filter(|w| matches!(w.mode, Mode::Broadcast))
            .peekable();
        if broadcast.peek().is_some() {
            let frames = V::event_frames(&self.envelope, event);
            for watcher in broadcast {
                for frame in &frames {
                    watcher.outbox.offer_or_close(frame.clone());
                }
            }
            self.event_frames = Some(frames);
        }
    }

    fn notice(&mut self, event: &V::Event, notice: V::Notice) {
        let mut frames = self.event_frames.take();
        for ((filter, _), group) in &self.groups {
            if !V::notice_reaches(&notice, filter) {
                continue;
            }
            let frames = frames.get_or_insert_with(|| V::event_frames(&self.envelope, event));
            for id in &group.members {
                // A member that has no state yet will see this in its first one.
                let Some(watcher) = self.members.get_mut(id) else {
                    continue;
                };
                if watcher.last_sent.is_some() {
                    for frame in frames.iter() {
                        if watcher.outbox.offer_notice(frame.clone()) == Delivery::Full {
                            // Its next state, which the writer puts before the changes it
                            // covers, must go out even if nothing else changes.
                            watcher.last_sent = None;
                        }
                    }
                }
            }
        }
    }

    fn deliver_owed(&mut self, view: Option<&V>, version: u64, failing: bool) {
        let owed: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, w)| w.pending)
            .map(|(id, _)| *id)
            .collect();
        let now = Instant::now();
        for id in owed {
            self.deliver_state(view, version, failing, id, false, now);
        }
    }

    fn vanished(&mut self) {
        let error = self.envelope.error(&V::KIND.not_found_message(&self.id));
        for watcher in self.members.values_mut() {
            // Members still owed their first state hear of it with that state's delivery.
            if watcher.pending {
                continue;
            }
            watcher.last_sent = None;
            watcher.outbox.offer_state(error.clone());
        }
    }

    fn reject(&mut self, cause: &'static str, detail: &dyn Display) {
        let kind = V::KIND.label();
        self.context.metrics.rejected(kind, cause);
        if self.warned.insert(cause) {
            tracing::warn!(kind, id = %self.id, cause, %detail, "refused a payload (further ones of this cause are logged at debug)");
        } else {
            tracing::debug!(kind, id = %self.id, cause, %detail, "refused a payload");
        }
    }

    fn stale_event(&mut self) {
        self.context.metrics.events_stale.inc();
    }

    fn snapshot_outcome(&mut self, outcome: &'static str) {
        self.context.metrics.snapshot(V::KIND.label(), outcome);
    }
}

impl<V: View> Shell<V> {
    fn on_command(&mut self, command: Command<V::Filter>, core: &mut SyncCore<V>) -> Continue {
        match command {
            Command::Join(member) => self.join(member, core),
            Command::GetStatus(id) => {
                if let Some(watcher) = self.members.get_mut(&id) {
                    watcher.status_requested.store(false, Ordering::Release);
                    watcher.pending = true;
                    let (view, version, failing) = (core.view(), core.version(), core.is_failing());
                    self.deliver_state(view, version, failing, id, true, Instant::now());
                }
            }
            Command::Leave(id) => {
                self.leave(id);
                if self.departure.leave_if_unwatched(&self.id) {
                    return Continue::Stop;
                }
            }
            Command::Resnapshot => core.on_lost(self),
        }
        Continue::Go
    }

    /// A payload on the key's subject: an event or a tip, for the core; anything else refused.
    fn on_payload(&mut self, payload: &[u8], core: &mut SyncCore<V>) {
        match view::parse_incoming::<V>(&self.id, payload) {
            Ok(Incoming::Event(event)) => {
                core.on_event(event, payload.len(), self);
                self.event_frames = None;
            }
            Ok(Incoming::Tip(rev)) => {
                self.context.metrics.tip(V::KIND.label());
                core.on_tip(rev, self);
            }
            Err(error) => self.reject(error.cause(), &error),
        }
    }

    /// Sends the snapshot request (the subscription is in place).
    fn send_request(&mut self) {
        let broker = self.context.broker.clone();
        let metrics = self.context.metrics.clone();
        let subject = view::snapshot_subject(V::KIND, &self.context.subjects, &self.id);
        let timeout = self.context.snapshot_timeout;
        self.request = Some(Box::pin(async move {
            let started = std::time::Instant::now();
            let reply = broker.request(subject, timeout).await;
            metrics.snapshot_took(V::KIND.label(), started.elapsed());
            reply
        }));
    }

    /// What a snapshot request's outcome means for the core.
    fn read_reply(&mut self, reply: Result<Bytes, BrokerError>) -> Reply<V> {
        match reply {
            Ok(payload) => match view::parse_snapshot::<V>(&self.id, &payload) {
                Ok(Some((rev, view))) => Reply::Found(rev, view),
                Ok(None) => Reply::NotFound,
                Err(error) => {
                    self.reject(error.cause(), &error);
                    Reply::Failed("malformed")
                }
            },
            Err(BrokerError::NoResponders) => Reply::Failed("no_responders"),
            Err(BrokerError::TimedOut) => Reply::Failed("timeout"),
            Err(BrokerError::Unavailable(_)) => Reply::Failed("unavailable"),
        }
    }

    fn join(&mut self, member: Member<V::Filter>, core: &SyncCore<V>) {
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
        let (view, version, failing) = (core.view(), core.version(), core.is_failing());
        self.deliver_state(view, version, failing, member.id, false, Instant::now());
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
    fn deliver_state(
        &mut self,
        view: Option<&V>,
        version: u64,
        failing: bool,
        id: MemberId,
        asked: bool,
        now: Instant,
    ) {
        let clock_in_use = self.group_clock_in_use(id);
        let Some(watcher) = self.members.get_mut(&id) else {
            return;
        };
        if !watcher.pending {
            return;
        }
        let Some(view) = view else {
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
                let Some(render) = render(&mut self.renders, view, version, filter) else {
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
    fn on_due_ticks(&mut self, core: &SyncCore<V>) {
        let now = Instant::now();
        let mut due: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, group)| group.next_tick <= now)
            .map(|(key, group)| (group.next_tick, key.clone()))
            .collect();
        due.sort_by_key(|(deadline, _)| *deadline);
        for (deadline, key) in due {
            self.on_tick(key, deadline, core);
        }
    }

    /// A group's tick, scheduled for `deadline`: members whose view changed and whose interval
    /// has passed get the state, rendered and stamped once for all of them.
    fn on_tick(&mut self, key: GroupKey<V::Filter>, deadline: Instant, core: &SyncCore<V>) {
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
        let Some(view) = core.view().filter(|view| view.exists()) else {
            return;
        };
        let Some(render) = render(&mut self.renders, view, core.version(), filter) else {
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

/// Resolves when the earliest group is due.
async fn sleep_until_earliest<K>(groups: &HashMap<K, Group>) {
    match groups.values().map(|group| group.next_tick).min() {
        Some(earliest) => tokio::time::sleep_until(earliest).await,
        None => std::future::pending().await,
    }
}

async fn next_event(events: &mut Option<Subscription>) -> Option<Received> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// The output of the future in `slot`, which is then emptied; pending while the slot is empty.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    let Some(future) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let output = future.await;
    *slot = None;
    output
}

/// Resolves when the timer in `slot` fires, emptying it; pending while the slot is empty.
async fn poll_sleep(slot: &mut Option<Pin<Box<Sleep>>>) {
    let Some(timer) = slot.as_mut() else {
        return std::future::pending().await;
    };
    timer.await;
    *slot = None;
}

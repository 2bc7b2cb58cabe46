//! Who watches one key and what each was sent: the members, the realtime groups (members that
//! share a filter and an interval, and so one clock), and one render per filter.
//!
//! The topic task owns it and calls it as the sync core decides; it does no I/O but offering
//! frames to the members' outboxes. A group has one timer; on each tick it renders its filter
//! once (only if the view changed since the last render) and shares that frame with every
//! member whose last state is different and at least one interval old.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::member::{Delivery, Member, MemberId, Mode, Outbox};
use crate::messages::{Envelope, Frame};
use crate::view::View;

/// A state stamped this recently is shared as it is (e.g. by every member that joined while the
/// first snapshot was on its way) rather than copied with a new timestamp.
const STAMP_REUSE: Duration = Duration::from_millis(100);

/// A tick this late is a stall, not timer jitter.
const LATE_TICK: Duration = Duration::from_millis(100);

/// Realtime members that share a filter and an interval, and so a timer and a render.
type GroupKey<F> = (F, Duration);

/// The members of one key and what they were sent.
pub(super) struct Audience<V: View> {
    /// The pre-escaped parts of every message about this key.
    envelope: Envelope,
    /// Everyone watching, by membership id.
    members: HashMap<MemberId, Watcher<V::Filter>>,
    /// Realtime members by filter and interval.
    groups: HashMap<GroupKey<V::Filter>, Group>,
    /// One render per distinct filter, shared by every group with that filter.
    renders: HashMap<V::Filter, Render>,
    /// The broadcast frames of the event being handled, so realtime notices of the same event
    /// reuse them instead of rendering it again.
    event_frames: Option<Vec<Frame>>,
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

/// What the view is now, as members are served from it.
pub(super) struct Now<'a, V> {
    /// The key's id, for the "not found" message.
    pub id: &'a str,
    /// The state; `None` until a first snapshot answered.
    pub view: Option<&'a V>,
    /// Bumped on every change to the view, so renders know when they are stale.
    pub version: u64,
    /// Snapshots are failing meanwhile.
    pub failing: bool,
}

// By hand: derived, they would ask `V: Copy` of the view, which is only borrowed.
impl<V> Clone for Now<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Now<'_, V> {}

impl<V: View> Audience<V> {
    /// Nobody yet; messages about the key are made from `envelope`.
    pub fn new(envelope: Envelope) -> Self {
        Self {
            envelope,
            members: HashMap::new(),
            groups: HashMap::new(),
            renders: HashMap::new(),
            event_frames: None,
        }
    }

    /// Whether any member is realtime (and so a group's clock runs).
    pub fn has_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Resolves when the earliest group is due.
    pub async fn next_tick(&self) {
        match self.groups.values().map(|group| group.next_tick).min() {
            Some(earliest) => tokio::time::sleep_until(earliest).await,
            None => std::future::pending().await,
        }
    }

    /// Adds `member`, and gives it the state if there is one (or word of why not).
    pub fn join(&mut self, member: Member<V::Filter>, now: Now<'_, V>) {
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
        self.deliver_state(now, member.id, false, Instant::now());
    }

    /// Member `id` left.
    pub fn leave(&mut self, id: MemberId) {
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

    /// Member `id` asked for the state (`get_status`).
    pub fn request_status(&mut self, id: MemberId, now: Now<'_, V>) {
        if let Some(watcher) = self.members.get_mut(&id) {
            watcher.status_requested.store(false, Ordering::Release);
            watcher.pending = true;
            self.deliver_state(now, id, true, Instant::now());
        }
    }

    /// Broadcast members get `event`, as it arrived.
    pub fn forward(&mut self, event: &V::Event) {
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

    /// Realtime members whose filter `notice` reaches hear of `event` at once.
    pub fn notice(&mut self, event: &V::Event, notice: V::Notice) {
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

    /// The event being handled is done with: its frames are not reused for the next one.
    pub fn event_done(&mut self) {
        self.event_frames = None;
    }

    /// Members owed a state get it now, or word of why not.
    pub fn deliver_owed(&mut self, now: Now<'_, V>) {
        let owed: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, w)| w.pending)
            .map(|(id, _)| *id)
            .collect();
        let at = Instant::now();
        for id in owed {
            self.deliver_state(now, id, false, at);
        }
    }

    /// The key vanished: every member that was given its state is told once, and realtime
    /// members get no more of it.
    pub fn vanished(&mut self, id: &str) {
        let error = self.envelope.error(&V::KIND.not_found_message(id));
        for watcher in self.members.values_mut() {
            // Members still owed their first state hear of it with that state's delivery.
            if watcher.pending {
                continue;
            }
            watcher.last_sent = None;
            watcher.outbox.offer_state(error.clone());
        }
    }

    /// Sends member `id` the state it is owed or, while there is none, why not: once per outage,
    /// and to every `get_status` (`asked`). `at` is shared by members served together, so that
    /// their periodic updates fall due on the same tick.
    fn deliver_state(&mut self, now: Now<'_, V>, id: MemberId, asked: bool, at: Instant) {
        let clock_in_use = self.group_clock_in_use(id);
        let Some(watcher) = self.members.get_mut(&id) else {
            return;
        };
        if !watcher.pending {
            return;
        }
        let Some(view) = now.view else {
            if now.failing && (asked || !watcher.told_unavailable) {
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
                .offer(self.envelope.error(&V::KIND.not_found_message(now.id)));
            return;
        }
        match &watcher.mode {
            Mode::Realtime { filter, interval } => {
                let Some(render) = render(&mut self.renders, view, now.version, filter) else {
                    return;
                };
                watcher.outbox.offer_state(render.frame(&self.envelope));
                if watcher.last_sent.is_none() {
                    watcher.next_update = at + *interval;
                    // The first state of a group sets its clock, so its first periodic update
                    // comes one interval later, not up to two; a clock others wait on stays.
                    if !clock_in_use {
                        if let Some(group) = self.groups.get_mut(&(filter.clone(), *interval)) {
                            group.next_tick = at + *interval;
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

    /// Every group whose tick has come, in the order they fell due; `view` at `version` is the
    /// state now (`None` before a first snapshot).
    pub fn on_due_ticks(&mut self, view: Option<&V>, version: u64) {
        let now = Instant::now();
        let mut due: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, group)| group.next_tick <= now)
            .map(|(key, group)| (group.next_tick, key.clone()))
            .collect();
        due.sort_by_key(|(deadline, _)| *deadline);
        for (deadline, key) in due {
            self.on_tick(key, deadline, view, version);
        }
    }

    /// A group's tick, scheduled for `deadline`: members whose view changed and whose interval
    /// has passed get the state, rendered and stamped once for all of them.
    fn on_tick(
        &mut self,
        key: GroupKey<V::Filter>,
        deadline: Instant,
        view: Option<&V>,
        version: u64,
    ) {
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
        let Some(view) = view.filter(|view| view.exists()) else {
            return;
        };
        let Some(render) = render(&mut self.renders, view, version, filter) else {
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

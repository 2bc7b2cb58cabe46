//! One watched key: its broker subscription, its view, and the connections watching it.
//!
//! A topic is a task that alone owns its state, so events for one key apply in order and the view
//! needs no lock. It keeps the view in step with the owner by SPEC 3's rule: subscribe first,
//! buffer events, request a snapshot, then apply the buffered and later events whose rev is above
//! the snapshot's. A lost message (reconnect, slow consumer) or a gap in a task's results starts
//! the same cycle again while the old view keeps serving.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{sleep, Sleep};
use tokio_util::time::{delay_queue, DelayQueue};

use super::member::{Member, MemberId, Mode, Outbox};
use super::registry::{Command, Departure, TopicContext};
use crate::broker::{BrokerError, Subscription};
use crate::messages::{Envelope, Frame};
use crate::view::{self, Applied, View};

/// Events kept while a snapshot is on its way; past this the oldest are dropped and the
/// snapshot that follows must cover them, or another one is taken.
const MAX_BUFFERED_EVENTS: usize = 10_000;

/// First wait before retrying a failed snapshot; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

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
    commands: mpsc::UnboundedReceiver<Command<V::Filter>>,
    /// The key's events; `None` until subscribed (and again if the broker closed it).
    events: Option<Subscription>,
    /// The state; `None` until the first snapshot answered (found or not).
    view: Option<V>,
    /// The rev of the last event the view reflects.
    view_rev: u64,
    /// Bumped on every change to the view, so renders know when they are stale.
    version: u64,
    /// The highest rev sent to broadcast members: they get every event once, even while the view
    /// waits for a snapshot.
    forwarded_rev: u64,
    /// Whether the view is live or waiting for a snapshot.
    sync: Sync<V::Event>,
    /// Everyone watching, by membership id.
    members: HashMap<MemberId, Watcher<V::Filter>>,
    /// One render per distinct filter, shared by every realtime member with that filter.
    renders: HashMap<V::Filter, Render>,
    /// When each realtime member is next due for an update.
    ticks: DelayQueue<MemberId>,
    /// Causes already logged at warn level, so a broken publisher cannot flood the log.
    warned: HashSet<&'static str>,
}

/// Where the view stands with the owner.
enum Sync<E> {
    /// Events apply as they arrive.
    Live,
    /// A snapshot is requested or due; events wait in the buffer.
    Loading(Loading<E>),
}

struct Loading<E> {
    /// Events that arrived since the snapshot was requested, in order.
    buffer: VecDeque<E>,
    /// The highest rev dropped from a full buffer: a snapshot older than it is not enough.
    dropped_rev: Option<u64>,
    /// Failed attempts in a row; sets the retry delay.
    failures: u32,
    /// The request on its way, if one is.
    request: Option<BoxFuture<'static, Result<Bytes, BrokerError>>>,
    /// When to try again after a failure.
    retry: Option<Pin<Box<Sleep>>>,
}

impl<E> Loading<E> {
    fn new() -> Self {
        Self {
            buffer: VecDeque::new(),
            dropped_rev: None,
            failures: 0,
            request: None,
            retry: None,
        }
    }

    /// Loading that requests its snapshot on the topic's next turn (for code that cannot await).
    fn due_now() -> Self {
        Self {
            retry: Some(Box::pin(sleep(Duration::ZERO))),
            ..Self::new()
        }
    }

    fn buffer(&mut self, event: E, rev: u64) {
        if self.buffer.len() == MAX_BUFFERED_EVENTS {
            self.buffer.pop_front();
            self.dropped_rev = Some(self.dropped_rev.unwrap_or(0).max(rev));
        }
        self.buffer.push_back(event);
    }
}

/// One member and what it has been sent.
struct Watcher<F> {
    /// Where its frames go.
    outbox: Outbox,
    /// Broadcast, or realtime with its filter and interval.
    mode: Mode<F>,
    /// It is owed the current state (it just joined, or asked) and there was none to give yet.
    needs_state: bool,
    /// It was told the state is unavailable during the current outage.
    told_unavailable: bool,
    /// Hash of the last state it was sent, for "only when changed".
    last_sent: Option<u64>,
    /// Its entry in `ticks` (realtime members only).
    tick: Option<delay_queue::Key>,
    /// Cleared when its status request is taken up, so the next one is sent.
    status_requested: Arc<AtomicBool>,
}

/// A filtered state rendered once for every member with the same filter.
struct Render {
    /// The topic version it was rendered at.
    version: u64,
    /// Hash of the rendered data: equal hashes mean nothing a member sees changed.
    hash: u64,
    /// The state message's tail, holding the data.
    tail: Bytes,
    /// Realtime members with this filter; the render is dropped when none is left.
    users: usize,
}

impl Render {
    /// A render not made yet, for `users` members.
    fn unused(users: usize) -> Self {
        Self {
            version: 0,
            hash: 0,
            tail: Bytes::new(),
            users,
        }
    }
}

impl<V: View> Topic<V> {
    pub(super) fn new(
        id: String,
        context: Arc<TopicContext>,
        departure: Departure<V::Filter>,
        commands: mpsc::UnboundedReceiver<Command<V::Filter>>,
    ) -> Self {
        Self {
            envelope: Envelope::new(V::KIND, &id),
            id,
            context,
            departure,
            commands,
            events: None,
            view: None,
            view_rev: 0,
            version: 0,
            forwarded_rev: 0,
            sync: Sync::Loading(Loading::new()),
            members: HashMap::new(),
            renders: HashMap::new(),
            ticks: DelayQueue::new(),
            warned: HashSet::new(),
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
                    Some(payload) => self.on_event(&payload),
                    None => {
                        tracing::warn!(kind, id = %self.id, "subscription ended; resubscribing");
                        self.events = None;
                        self.context.metrics.subscriptions.dec();
                        self.start_loading().await;
                    }
                },
                step = snapshot_step(&mut self.sync) => match step {
                    SnapshotStep::Replied(reply) => self.on_snapshot(reply),
                    SnapshotStep::RetryDue => self.request_snapshot().await,
                },
                Some(due) = self.ticks.next(), if !self.ticks.is_empty() => {
                    self.on_tick(due.into_inner());
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
                    watcher.needs_state = true;
                    self.deliver_state(id);
                }
            }
            Command::Leave(id) => {
                self.leave(id);
                if self.departure.leave_if_unwatched(&self.id) {
                    return Continue::Stop;
                }
            }
            Command::Resnapshot => {
                if let Sync::Loading(loading) = &mut self.sync {
                    // Start over at once: the reason for the earlier failures may be gone.
                    loading.failures = 0;
                }
                self.start_loading().await;
            }
        }
        Continue::Go
    }

    fn join(&mut self, member: Member<V::Filter>) {
        let mut watcher = Watcher {
            outbox: member.outbox,
            mode: member.mode,
            needs_state: false,
            told_unavailable: false,
            last_sent: None,
            tick: None,
            status_requested: member.status_requested,
        };
        if let Mode::Realtime { filter, interval } = &watcher.mode {
            watcher.needs_state = true;
            watcher.tick = Some(self.ticks.insert(member.id, *interval));
            if let Some(render) = self.renders.get_mut(filter) {
                render.users += 1;
            } else {
                self.renders.insert(filter.clone(), Render::unused(1));
            }
        }
        self.members.insert(member.id, watcher);
        self.deliver_state(member.id);
    }

    fn leave(&mut self, id: MemberId) {
        let Some(watcher) = self.members.remove(&id) else {
            return;
        };
        if let Some(tick) = watcher.tick {
            self.ticks.remove(&tick);
        }
        if let Mode::Realtime { filter, .. } = &watcher.mode {
            if let Some(render) = self.renders.get_mut(filter) {
                render.users = render.users.saturating_sub(1);
                if render.users == 0 {
                    self.renders.remove(filter);
                }
            }
        }
    }

    /// Sends member `id` the current state if it is owed one and there is a state to send.
    fn deliver_state(&mut self, id: MemberId) {
        let Some(watcher) = self.members.get_mut(&id) else {
            return;
        };
        if !watcher.needs_state {
            return;
        }
        let Some(view) = &self.view else {
            if matches!(&self.sync, Sync::Loading(l) if l.failures > 0) && !watcher.told_unavailable
            {
                watcher.told_unavailable = true;
                watcher
                    .outbox
                    .offer(self.envelope.error(V::KIND.unavailable_message()));
            }
            return;
        };
        watcher.needs_state = false;
        watcher.told_unavailable = false;
        if let (Mode::Realtime { interval, .. }, Some(tick)) = (&watcher.mode, &watcher.tick) {
            // The next periodic update is due one interval after this one.
            self.ticks.reset(tick, *interval);
        }
        if !view.exists() {
            watcher.last_sent = None;
            watcher
                .outbox
                .offer(self.envelope.error(&V::KIND.not_found_message(&self.id)));
            return;
        }
        let default_filter = V::Filter::default();
        let filter = match &watcher.mode {
            Mode::Realtime { filter, .. } => filter,
            Mode::Broadcast => &default_filter,
        };
        let render = render(
            &self.envelope,
            &mut self.renders,
            view,
            self.version,
            filter,
        );
        let frame = self.envelope.stamped(render.tail.clone());
        let hash = render.hash;
        if watcher.outbox.offer(frame) == super::member::Delivery::Queued {
            if let Mode::Realtime { .. } = watcher.mode {
                watcher.last_sent = Some(hash);
            }
        }
    }

    fn on_tick(&mut self, id: MemberId) {
        let Some(watcher) = self.members.get_mut(&id) else {
            return;
        };
        let Mode::Realtime { filter, interval } = &watcher.mode else {
            return;
        };
        watcher.tick = Some(self.ticks.insert(id, *interval));
        let Some(view) = &self.view else { return };
        if watcher.needs_state || !view.exists() {
            return;
        }
        let render = render(
            &self.envelope,
            &mut self.renders,
            view,
            self.version,
            filter,
        );
        if watcher.last_sent == Some(render.hash) {
            return;
        }
        let frame = self.envelope.stamped(render.tail.clone());
        // A full queue leaves `last_sent` as it was, so the next tick tries again with the
        // state of then: realtime clients lose nothing by conflation.
        if watcher.outbox.offer(frame) == super::member::Delivery::Queued {
            watcher.last_sent = Some(render.hash);
        }
    }

    fn on_event(&mut self, payload: &[u8]) {
        let event = match view::parse_event::<V>(&self.id, payload) {
            Ok(event) => event,
            Err(error) => return self.reject(error.cause(), &error),
        };
        let rev = V::event_rev(&event);
        let mut frames = None;
        if rev > self.forwarded_rev {
            self.forwarded_rev = rev;
            let broadcast: Vec<&Outbox> = self
                .members
                .values()
                .filter(|w| matches!(w.mode, Mode::Broadcast))
                .map(|w| &w.outbox)
                .collect();
            if !broadcast.is_empty() {
                let rendered = V::event_frames(&self.envelope, &event);
                for outbox in broadcast {
                    for frame in &rendered {
                        outbox.offer_or_close(frame.clone());
                    }
                }
                frames = Some(rendered);
            }
        }
        if let Sync::Loading(loading) = &mut self.sync {
            loading.buffer(event, rev);
        } else {
            self.apply(event, Some(frames));
        }
    }

    /// Applies one event to the live view. `frames` are the event's rendered broadcast frames
    /// when realtime members should hear of it now (`Some(None)`: not rendered yet), or `None`
    /// when the event is being replayed from the buffer and the state itself will tell.
    fn apply(&mut self, event: V::Event, frames: Option<Option<Vec<Frame>>>) {
        let rev = V::event_rev(&event);
        let Some(view) = &mut self.view else { return };
        if rev <= self.view_rev {
            self.context.metrics.events_stale.inc();
            return;
        }
        match view.apply(&event) {
            Applied::Changed(notice) => {
                self.view_rev = rev;
                self.version += 1;
                if let (Some(notice), Some(frames)) = (notice, frames) {
                    let frames = frames.unwrap_or_else(|| V::event_frames(&self.envelope, &event));
                    for watcher in self.members.values() {
                        if let Mode::Realtime { filter, .. } = &watcher.mode {
                            if !watcher.needs_state && V::notice_reaches(&notice, filter) {
                                for frame in &frames {
                                    watcher.outbox.offer(frame.clone());
                                }
                            }
                        }
                    }
                }
            }
            Applied::Gap => {
                tracing::info!(kind = V::KIND.label(), id = %self.id, rev, "missed events; taking a fresh snapshot");
                let mut loading = Loading::due_now();
                loading.buffer(event, rev);
                self.sync = Sync::Loading(loading);
            }
            Applied::Ignored(cause) => {
                self.reject(cause, &format_args!("event rev {rev} does not apply"))
            }
        }
    }

    fn on_snapshot(&mut self, reply: Result<Bytes, BrokerError>) {
        let kind = V::KIND.label();
        let parsed = match reply {
            Ok(payload) => view::parse_snapshot::<V>(&self.id, &payload).map_err(|error| {
                self.reject(error.cause(), &error);
                "malformed"
            }),
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
        self.context.metrics.snapshot(
            kind,
            if snapshot.is_some() {
                "found"
            } else {
                "not_found"
            },
        );
        let Sync::Loading(loading) = std::mem::replace(&mut self.sync, Sync::Live) else {
            return;
        };
        let (rev, view) = snapshot.unwrap_or_default();
        self.view = Some(view);
        self.view_rev = rev;
        self.version += 1;
        for event in loading.buffer {
            if let Sync::Loading(again) = &mut self.sync {
                let rev = V::event_rev(&event);
                again.buffer(event, rev);
            } else {
                self.apply(event, None);
            }
        }
        let covered = loading
            .dropped_rev
            .is_none_or(|dropped| dropped <= self.view_rev);
        if !covered {
            tracing::info!(kind, id = %self.id, "snapshot older than dropped events; taking another");
            self.sync = Sync::Loading(Loading::due_now());
        }
        self.deliver_owed_states();
    }

    /// Gives every member that is owed the state what there is: the state, or word of why not.
    fn deliver_owed_states(&mut self) {
        let owed: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, w)| w.needs_state)
            .map(|(id, _)| *id)
            .collect();
        for id in owed {
            self.deliver_state(id);
        }
    }

    /// Moves to loading (keeping the view to serve meanwhile) and requests a snapshot now.
    async fn start_loading(&mut self) {
        if let Sync::Live = self.sync {
            self.sync = Sync::Loading(Loading::new());
        }
        self.request_snapshot().await;
    }

    /// Subscribes if needed, then sends a snapshot request.
    async fn request_snapshot(&mut self) {
        let Sync::Loading(loading) = &mut self.sync else {
            return;
        };
        loading.retry = None;
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
        let subject = view::snapshot_subject(V::KIND, &context.subjects, &self.id);
        let timeout = context.snapshot_timeout;
        loading.request = Some(Box::pin(
            async move { broker.request(subject, timeout).await },
        ));
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

/// The render of `filter` at `version`, rendering it if the one held is older.
fn render<'a, V: View>(
    envelope: &Envelope,
    renders: &'a mut HashMap<V::Filter, Render>,
    view: &V,
    version: u64,
    filter: &V::Filter,
) -> &'a Render {
    let render = renders
        .entry(filter.clone())
        .or_insert_with(|| Render::unused(0));
    if render.version != version || render.tail.is_empty() {
        let data = view.render(filter);
        let mut hasher = DefaultHasher::new();
        data.hash(&mut hasher);
        let hash = hasher.finish();
        if hash != render.hash || render.tail.is_empty() {
            render.tail = envelope.state_tail(&data);
            render.hash = hash;
        }
        render.version = version;
    }
    render
}

fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.pow(exponent))
        .min(MAX_RETRY_DELAY)
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
    /// The wait after a failure is over.
    RetryDue,
}

/// Resolves when the snapshot request replies or the retry falls due; never while live.
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
}

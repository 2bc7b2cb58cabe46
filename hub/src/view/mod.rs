//! What the hub knows of one key's state, and how that state looks to clients.
//!
//! A [`View`] is owned by exactly one topic task, so it needs no locks. The topic decides *when*
//! events apply (revs, snapshots, buffering); the view decides *how*: applying an event,
//! rendering a client's filtered state, rendering an event for the broadcast endpoints.

mod filter;
mod order;
mod scene;
mod task;

use std::fmt::Debug;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use vwed_publisher::wire::{Keyed, PayloadError, SnapshotReply};
use vwed_publisher::Subjects;

use crate::messages::{Envelope, Frame, Kind};

pub use filter::{FilterFields, LocationFilter};
pub use order::{natural_cmp, LocationOrder};
pub use scene::{SceneView, StatusNotice};
pub use task::TaskView;

/// The outcome of applying one event to a view.
#[derive(Debug, PartialEq)]
pub enum Applied<N> {
    /// The view took the event; `N` is what realtime clients hear about at once, if anything.
    Changed(Option<N>),
    /// The event shows that earlier events were missed: the view needs a fresh snapshot.
    Gap,
    /// The event cannot apply to this view (the cause names why); the view is unchanged.
    Ignored(&'static str),
}

/// One kind of key's state: a task's result list or a scene's storage locations.
pub trait View: Default + Send + 'static {
    /// Which kind of key this view holds.
    const KIND: Kind;
    /// A change event, as published on the key's event subject.
    type Event: DeserializeOwned + Keyed + Send + 'static;
    /// A snapshot reply's state.
    type Snapshot: DeserializeOwned + Keyed + Send + 'static;
    /// A publisher's tip: the latest rev it published for the key (SPEC 3, "Tips").
    type Tip: DeserializeOwned + Keyed + Send + 'static;
    /// What a realtime client asked to see; clients with equal filters share one render.
    type Filter: Clone + Default + Eq + Hash + Debug + Send + Sync + 'static;
    /// A change realtime clients hear about as it happens, before the next periodic update.
    type Notice: Send;

    /// The view of a snapshot, and the rev it reflects.
    fn from_snapshot(snapshot: Self::Snapshot) -> (u64, Self);

    /// The rev an event brings the view to.
    fn event_rev(event: &Self::Event) -> u64;

    /// The rev its publisher sent for the key just before this event, when it says.
    fn event_prev_rev(event: &Self::Event) -> Option<u64>;

    /// The rev a tip names.
    fn tip_rev(tip: &Self::Tip) -> u64;

    /// Whether the owner knows the key (a snapshot found it, or an event created it).
    fn exists(&self) -> bool;

    /// Applies one event; applying the same event twice changes nothing.
    fn apply(&mut self, event: &Self::Event) -> Applied<Self::Notice>;

    /// The messages the broadcast endpoint sends for `event`, rendered once for all its clients.
    fn event_frames(envelope: &Envelope, event: &Self::Event) -> Vec<Frame>;

    /// The `data` of a state message for a client with `filter`, as JSON.
    fn render(&self, filter: &Self::Filter) -> Vec<u8>;

    /// Whether a client with `filter` hears about `notice`.
    fn notice_reaches(notice: &Self::Notice, filter: &Self::Filter) -> bool;
}

/// Parses an event and checks that it belongs to `id`.
pub fn parse_event<V: View>(id: &str, payload: &[u8]) -> Result<V::Event, PayloadError> {
    vwed_publisher::wire::parse_keyed(payload, id)
}

/// What arrives on a key's event subject.
#[derive(Debug)]
pub enum Incoming<E> {
    /// A change.
    Event(E),
    /// A tip: the latest rev the publisher published for the key. Never forwarded to clients.
    Tip(u64),
}

/// Parses an event or a tip and checks that it belongs to `id`. Events are by far the common
/// case, so a tip is tried only when the payload is not an event; a payload that is neither
/// gets the event's parse error, which says most about what was meant.
pub fn parse_incoming<V: View>(
    id: &str,
    payload: &[u8],
) -> Result<Incoming<V::Event>, PayloadError> {
    match parse_event::<V>(id, payload) {
        Ok(event) => Ok(Incoming::Event(event)),
        Err(PayloadError::Malformed(error)) => {
            match vwed_publisher::wire::parse_keyed::<V::Tip>(payload, id) {
                Ok(tip) => Ok(Incoming::Tip(V::tip_rev(&tip))),
                Err(wrong @ PayloadError::WrongKey { .. }) => Err(wrong),
                // A tip has no chain to break; not a tip either: the event's error says most.
                Err(PayloadError::Malformed(_) | PayloadError::BrokenChain { .. }) => {
                    Err(PayloadError::Malformed(error))
                }
            }
        }
        Err(other) => Err(other),
    }
}

/// Parses a snapshot reply for `id`: the view and its rev, or `None` when the owner does not
/// know the key.
pub fn parse_snapshot<V: View>(id: &str, payload: &[u8]) -> Result<Option<(u64, V)>, PayloadError> {
    match SnapshotReply::<V::Snapshot>::from_json(payload)? {
        SnapshotReply::NotFound => Ok(None),
        SnapshotReply::Found(snapshot) if snapshot.key() != id => Err(PayloadError::WrongKey {
            expected: id.to_owned(),
            found: snapshot.key().to_owned(),
        }),
        SnapshotReply::Found(snapshot) => Ok(Some(V::from_snapshot(snapshot))),
    }
}

/// The subject a kind of key's events arrive on.
pub fn event_subject(kind: Kind, subjects: &Subjects, id: &str) -> String {
    match kind {
        Kind::Task => subjects.task_events(id),
        Kind::Scene => subjects.scene_events(id),
    }
}

/// The subject a kind of key's snapshots are requested on.
pub fn snapshot_subject(kind: Kind, subjects: &Subjects, id: &str) -> String {
    match kind {
        Kind::Task => subjects.task_snapshot(id),
        Kind::Scene => subjects.scene_snapshot(id),
    }
}

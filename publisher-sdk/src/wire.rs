//! The JSON payloads that travel over NATS (SPEC section 3).
//!
//! These types are the single definition of the publisher contract: the SDK serializes them and
//! the hub deserializes them, so the two sides cannot drift apart. Field order matters where the
//! client API document fixes it ([`StorageLocation`] has the 27 fields of the original table, in
//! that order), because the hub serializes these same structs into client messages.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The current UTC time as the API writes every timestamp: `2025-06-11T12:00:00.000Z`.
pub fn timestamp_now() -> String {
    timestamp_at(SystemTime::now())
}

/// `time` as the API writes every timestamp: UTC ISO 8601 with milliseconds.
pub fn timestamp_at(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// How one block of a task ended, or that it is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// The block finished successfully.
    Success,
    /// The block failed.
    Failed,
    /// The block is still executing.
    Running,
}

/// One entry of a task record's execution results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// When the result was recorded, UTC ISO 8601 (see [`timestamp_now`]).
    pub created_at: String,
    /// What happened, conventionally `[block name] description`.
    pub context: String,
    /// The state this result reports.
    pub status: TaskStatus,
}

impl TaskResult {
    /// A result stamped with the current time.
    pub fn now(context: impl Into<String>, status: TaskStatus) -> Self {
        Self {
            created_at: timestamp_now(),
            context: context.into(),
            status,
        }
    }
}

/// A change to one task record's result list, published on `<prefix>.task.<key>.execution`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task record this event belongs to; the hub drops an event whose id is not the key of
    /// the subject it arrived on.
    pub task_record_id: String,
    /// Version of the task's result list after this change; strictly increasing per task.
    pub rev: u64,
    /// The rev of the event (or tip) its publisher sent for this key just before this one, when
    /// it knows it: a hub that holds the key below it missed events in between and takes a fresh
    /// snapshot, so an event lost in the middle of a stream heals at the next one (a tip only
    /// names the latest rev). Below `rev`; absent on the wire when `None`. The publisher fills it
    /// in when left `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_rev: Option<u64>,
    /// What changed.
    #[serde(flatten)]
    pub change: TaskChange,
}

/// The two ways a task's result list changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TaskChange {
    /// `results` are written into the list starting at `index` (0-based), overwriting what is
    /// there, so that applying the same event twice changes nothing.
    Append {
        /// Position of the first result in the task's full list.
        index: u64,
        /// The new results, in order.
        results: Vec<TaskResult>,
    },
    /// `results` is the task's whole list.
    Replace {
        /// The full list, in the order the owner appended it.
        results: Vec<TaskResult>,
    },
}

impl TaskChange {
    /// The results this change carries (what the broadcast endpoint forwards).
    pub fn results(&self) -> &[TaskResult] {
        match self {
            TaskChange::Append { results, .. } | TaskChange::Replace { results } => results,
        }
    }
}

/// One storage location (a layer of a station), with the 27 fields of the client API, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageLocation {
    /// Layer id; unique within a scene.
    pub id: String,
    /// Layer index within its station, from 1.
    pub layer_index: i64,
    /// Layer name.
    pub layer_name: String,
    /// Operate point (action point) id.
    pub operate_point_id: Option<String>,
    /// Station name; locations are ordered by it (naturally, numbers as numbers).
    pub station_name: String,
    /// Storage location name.
    pub storage_location_name: Option<String>,
    /// Scene the location belongs to.
    pub scene_id: String,
    /// Storage area id.
    pub storage_area_id: String,
    /// Storage area name.
    pub area_name: Option<String>,
    /// Whether goods occupy the location.
    pub is_occupied: bool,
    /// Whether the location is locked.
    pub is_locked: bool,
    /// Whether the location is disabled.
    pub is_disabled: bool,
    /// Whether an empty tray stands there.
    pub is_empty_tray: bool,
    /// Who holds the lock.
    pub locked_by: Option<String>,
    /// Description of the goods.
    pub goods_content: Option<String>,
    /// Goods weight, grams.
    pub goods_weight: Option<i64>,
    /// Goods volume, cubic centimetres.
    pub goods_volume: Option<i64>,
    /// When the goods were stored.
    pub goods_stored_at: Option<String>,
    /// When the goods were retrieved.
    pub goods_retrieved_at: Option<String>,
    /// Last access time.
    pub last_access_at: Option<String>,
    /// Maximum load, grams.
    pub max_weight: Option<i64>,
    /// Maximum volume, cubic centimetres.
    pub max_volume: Option<i64>,
    /// Layer height, millimetres.
    pub layer_height: Option<i64>,
    /// Tags.
    pub tags: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Creation time.
    pub created_at: Option<String>,
    /// Last update time.
    pub updated_at: Option<String>,
}

impl StorageLocation {
    /// A free, unlocked, enabled location with the required fields set and every optional
    /// field empty; set the rest with struct update syntax.
    pub fn new(
        scene_id: impl Into<String>,
        id: impl Into<String>,
        storage_area_id: impl Into<String>,
        station_name: impl Into<String>,
        layer_index: i64,
    ) -> Self {
        let station_name = station_name.into();
        Self {
            id: id.into(),
            layer_index,
            layer_name: format!("{station_name}-{layer_index}"),
            operate_point_id: None,
            station_name,
            storage_location_name: None,
            scene_id: scene_id.into(),
            storage_area_id: storage_area_id.into(),
            area_name: None,
            is_occupied: false,
            is_locked: false,
            is_disabled: false,
            is_empty_tray: false,
            locked_by: None,
            goods_content: None,
            goods_weight: None,
            goods_volume: None,
            goods_stored_at: None,
            goods_retrieved_at: None,
            last_access_at: None,
            max_weight: None,
            max_volume: None,
            layer_height: None,
            tags: None,
            description: None,
            created_at: None,
            updated_at: None,
        }
    }

    /// Writes a status change's absolute values into this record.
    pub fn apply_status(&mut self, status: &LocationStatus) {
        self.is_occupied = status.is_occupied;
        self.is_locked = status.is_locked;
        self.is_disabled = status.is_disabled;
        self.is_empty_tray = status.is_empty_tray;
        self.locked_by.clone_from(&status.locked_by);
        self.goods_content.clone_from(&status.goods_content);
        self.last_access_at.clone_from(&status.last_access_at);
        self.updated_at.clone_from(&status.updated_at);
    }

    /// The status part of this record, as a status change would carry it.
    pub fn status(&self) -> LocationStatus {
        LocationStatus {
            id: self.id.clone(),
            is_occupied: self.is_occupied,
            is_locked: self.is_locked,
            is_disabled: self.is_disabled,
            is_empty_tray: self.is_empty_tray,
            locked_by: self.locked_by.clone(),
            goods_content: self.goods_content.clone(),
            last_access_at: self.last_access_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// The `new_status` of a status change: absolute values, never deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationStatus {
    /// Layer id of the location that changed.
    pub id: String,
    /// Whether goods occupy the location.
    pub is_occupied: bool,
    /// Whether the location is locked.
    pub is_locked: bool,
    /// Whether the location is disabled.
    pub is_disabled: bool,
    /// Whether an empty tray stands there.
    pub is_empty_tray: bool,
    /// Who holds the lock.
    pub locked_by: Option<String>,
    /// Description of the goods.
    pub goods_content: Option<String>,
    /// Last access time.
    pub last_access_at: Option<String>,
    /// Last update time.
    pub updated_at: Option<String>,
}

/// What a status change did. The hub forwards any action string unchanged; the known ones have
/// variants so that publishers cannot misspell them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StatusAction {
    /// Goods were put in.
    Occupy,
    /// Goods were taken out.
    Release,
    /// The location was locked.
    Lock,
    /// The location was unlocked.
    Unlock,
    /// The location was enabled.
    Enable,
    /// The location was disabled.
    Disable,
    /// An empty tray was recorded.
    SetEmptyTray,
    /// The empty tray mark was cleared.
    ClearEmptyTray,
    /// Some other field changed.
    Update,
    /// An action this contract does not name; forwarded as is.
    Other(String),
}

impl StatusAction {
    /// The action as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            StatusAction::Occupy => "OCCUPY",
            StatusAction::Release => "RELEASE",
            StatusAction::Lock => "LOCK",
            StatusAction::Unlock => "UNLOCK",
            StatusAction::Enable => "ENABLE",
            StatusAction::Disable => "DISABLE",
            StatusAction::SetEmptyTray => "SET_EMPTY_TRAY",
            StatusAction::ClearEmptyTray => "CLEAR_EMPTY_TRAY",
            StatusAction::Update => "UPDATE",
            StatusAction::Other(other) => other,
        }
    }
}

impl From<&str> for StatusAction {
    fn from(action: &str) -> Self {
        match action {
            "OCCUPY" => StatusAction::Occupy,
            "RELEASE" => StatusAction::Release,
            "LOCK" => StatusAction::Lock,
            "UNLOCK" => StatusAction::Unlock,
            "ENABLE" => StatusAction::Enable,
            "DISABLE" => StatusAction::Disable,
            "SET_EMPTY_TRAY" => StatusAction::SetEmptyTray,
            "CLEAR_EMPTY_TRAY" => StatusAction::ClearEmptyTray,
            "UPDATE" => StatusAction::Update,
            other => StatusAction::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for StatusAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StatusAction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StatusAction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let action = <Cow<'de, str>>::deserialize(deserializer)?;
        Ok(StatusAction::from(action.as_ref()))
    }
}

/// A change to one scene's storage locations, published on `<prefix>.scene.<key>.storage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneEvent {
    /// The scene this event belongs to; the hub drops an event whose id is not the key of the
    /// subject it arrived on.
    pub scene_id: String,
    /// Version of the scene after this change; strictly increasing per scene.
    pub rev: u64,
    /// The rev of the event (or tip) its publisher sent for this key just before this one, when
    /// it knows it: a hub that holds the key below it missed events in between and takes a fresh
    /// snapshot, so an event lost in the middle of a stream heals at the next one (a tip only
    /// names the latest rev). Below `rev`; absent on the wire when `None`. The publisher fills it
    /// in when left `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_rev: Option<u64>,
    /// What changed.
    #[serde(flatten)]
    pub change: SceneChange,
}

/// The ways a scene's storage locations change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SceneChange {
    /// One location's status fields changed; clients see it as `storage_location_status_change`.
    StatusChange {
        /// Layer name of the location.
        layer_name: String,
        /// What happened.
        action: StatusAction,
        /// When it happened, UTC ISO 8601 (see [`timestamp_now`]).
        timestamp: String,
        /// The location's status after the change.
        new_status: LocationStatus,
    },
    /// Full records, added or replaced by id.
    Upsert {
        /// The records as they are now.
        storage_locations: Vec<StorageLocation>,
    },
    /// Locations removed, by id.
    Remove {
        /// Ids of the removed locations.
        ids: Vec<String>,
    },
}

/// A task tip (SPEC section 3, "Tips"): names the latest rev the publisher issued for a task
/// record, and nothing else. Publishers send one now and then, on the task's event subject
/// `<prefix>.task.<key>.execution`, for every task they published an event for lately; a hub
/// holding the task at a lower rev has missed an event (core NATS delivers at most once) and
/// takes a fresh snapshot.
///
/// On the wire: `{"task_record_id":"t-1","rev":17,"op":"tip"}`. It deserializes only with
/// `"op": "tip"`, so a task event never passes for a tip (nor a tip for an event: [`TaskChange`]
/// has no tip variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTip {
    /// The task record this tip is about; the tip travels on that record's event subject.
    pub task_record_id: String,
    /// The rev of the last event published for the task: a hub holding less missed something.
    pub rev: u64,
}

/// A scene tip (SPEC section 3, "Tips"): names the latest rev the publisher issued for a scene,
/// and nothing else, on the scene's event subject `<prefix>.scene.<key>.storage`. See
/// [`TaskTip`].
///
/// On the wire: `{"scene_id":"s-1","rev":11,"kind":"tip"}`. It deserializes only with
/// `"kind": "tip"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneTip {
    /// The scene this tip is about; the tip travels on that scene's event subject.
    pub scene_id: String,
    /// The rev of the last event published for the scene: a hub holding less missed something.
    pub rev: u64,
}

/// The tag value that marks a tip: written as `"tip"`, and read from nothing else.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum TipMark {
    #[serde(rename = "tip")]
    Tip,
}

/// [`TaskTip`] as it travels: its fields, then the tag (the order of the contract's examples).
#[derive(Serialize, Deserialize)]
struct TaskTipWire<'a> {
    #[serde(borrow)]
    task_record_id: Cow<'a, str>,
    rev: u64,
    op: TipMark,
}

/// [`SceneTip`] as it travels: its fields, then the tag.
#[derive(Serialize, Deserialize)]
struct SceneTipWire<'a> {
    #[serde(borrow)]
    scene_id: Cow<'a, str>,
    rev: u64,
    kind: TipMark,
}

impl Serialize for TaskTip {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskTipWire {
            task_record_id: Cow::Borrowed(&self.task_record_id),
            rev: self.rev,
            op: TipMark::Tip,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskTip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = TaskTipWire::deserialize(deserializer)?;
        Ok(TaskTip {
            task_record_id: wire.task_record_id.into_owned(),
            rev: wire.rev,
        })
    }
}

impl Serialize for SceneTip {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SceneTipWire {
            scene_id: Cow::Borrowed(&self.scene_id),
            rev: self.rev,
            kind: TipMark::Tip,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SceneTip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = SceneTipWire::deserialize(deserializer)?;
        Ok(SceneTip {
            scene_id: wire.scene_id.into_owned(),
            rev: wire.rev,
        })
    }
}

/// The reply to a task snapshot request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    /// The task record.
    pub task_record_id: String,
    /// The rev of the last event this state reflects.
    pub rev: u64,
    /// The task's full result list.
    pub results: Vec<TaskResult>,
}

/// The reply to a scene snapshot request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneSnapshot {
    /// The scene.
    pub scene_id: String,
    /// The rev of the last event this state reflects.
    pub rev: u64,
    /// Every storage location of the scene.
    pub storage_locations: Vec<StorageLocation>,
}

/// A snapshot reply as it travels: `{"found": true, ...snapshot}` or `{"found": false}`.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotReply<T> {
    /// The owner knows the key; here is its state.
    Found(T),
    /// The owner does not know the key (yet).
    NotFound,
}

/// Why a payload from NATS was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or not of the contract's shape.
    #[error("malformed payload: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The payload's id is not the key of the subject it came on.
    #[error("payload is for {found:?}, but arrived on the subject of {expected:?}")]
    WrongKey {
        /// The id the subject names.
        expected: String,
        /// The id inside the payload.
        found: String,
    },
    /// An event's `prev_rev` is not below its `rev`.
    #[error("prev_rev {prev_rev} is not below rev {rev}")]
    BrokenChain {
        /// The event's rev.
        rev: u64,
        /// The rev it names as the one before it.
        prev_rev: u64,
    },
}

impl PayloadError {
    /// A short, stable name for the cause, fit for a metric label or a log field.
    pub fn cause(&self) -> &'static str {
        match self {
            PayloadError::Malformed(_) => "malformed",
            PayloadError::WrongKey { .. } => "wrong_key",
            PayloadError::BrokenChain { .. } => "broken_chain",
        }
    }
}

#[derive(Serialize)]
struct FoundWire<'a, T> {
    found: bool,
    #[serde(flatten)]
    snapshot: &'a T,
}

#[derive(Deserialize)]
struct FoundFlag {
    found: bool,
}

impl<T: Serialize> SnapshotReply<T> {
    /// The reply's JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            SnapshotReply::Found(snapshot) => serde_json::to_vec(&FoundWire {
                found: true,
                snapshot,
            }),
            SnapshotReply::NotFound => Ok(br#"{"found":false}"#.to_vec()),
        }
    }
}

impl<T: serde::de::DeserializeOwned> SnapshotReply<T> {
    /// Parses a reply. A `found: true` reply must hold the whole snapshot.
    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        // A derived struct also reads a JSON array by position, so `[false]` would pass for
        // `{"found":false}`; replies are objects.
        let first = payload.iter().find(|b| !b" \t\n\r".contains(b));
        if first != Some(&b'{') {
            return Err(serde::de::Error::custom(
                "a snapshot reply must be a JSON object",
            ));
        }
        // Two passes keep the error of a broken `found: true` reply precise; replies are rare
        // next to events, so the second parse costs nothing that matters.
        if serde_json::from_slice::<FoundFlag>(payload)?.found {
            Ok(SnapshotReply::Found(serde_json::from_slice(payload)?))
        } else {
            Ok(SnapshotReply::NotFound)
        }
    }
}

/// Anything that belongs to one key, so the hub can check it arrived on that key's subject.
pub trait Keyed {
    /// The task record id or scene id inside the payload.
    fn key(&self) -> &str;

    /// Checks what the payload's types alone cannot: an event's `prev_rev` is below its `rev`.
    fn check(&self) -> Result<(), PayloadError> {
        Ok(())
    }
}

/// An event's `prev_rev` must name an earlier rev than its own.
fn check_chain(rev: u64, prev_rev: Option<u64>) -> Result<(), PayloadError> {
    match prev_rev {
        Some(prev_rev) if prev_rev >= rev => Err(PayloadError::BrokenChain { rev, prev_rev }),
        _ => Ok(()),
    }
}

impl Keyed for TaskEvent {
    fn key(&self) -> &str {
        &self.task_record_id
    }

    fn check(&self) -> Result<(), PayloadError> {
        check_chain(self.rev, self.prev_rev)
    }
}
impl Keyed for SceneEvent {
    fn key(&self) -> &str {
        &self.scene_id
    }

    fn check(&self) -> Result<(), PayloadError> {
        check_chain(self.rev, self.prev_rev)
    }
}
impl Keyed for TaskTip {
    fn key(&self) -> &str {
        &self.task_record_id
    }
}
impl Keyed for SceneTip {
    fn key(&self) -> &str {
        &self.scene_id
    }
}
impl Keyed for TaskSnapshot {
    fn key(&self) -> &str {
        &self.task_record_id
    }
}
impl Keyed for SceneSnapshot {
    fn key(&self) -> &str {
        &self.scene_id
    }
}

/// Parses an event or snapshot and checks that it belongs to `expected_key`.
pub fn parse_keyed<T>(payload: &[u8], expected_key: &str) -> Result<T, PayloadError>
where
    T: serde::de::DeserializeOwned + Keyed,
{
    let parsed: T = serde_json::from_slice(payload)?;
    if parsed.key() != expected_key {
        return Err(PayloadError::WrongKey {
            expected: expected_key.to_owned(),
            found: parsed.key().to_owned(),
        });
    }
    parsed.check()?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_event_matches_the_contract() {
        let json = r#"{"task_record_id":"t-1","rev":17,"op":"append","index":4,
            "results":[{"created_at":"2025-06-11T12:00:00.000Z","context":"[取货] 开始","status":"RUNNING"}]}"#;
        let event: TaskEvent = serde_json::from_str(json).unwrap();
        assert_eq!(event.rev, 17);
        assert_eq!(
            event.change,
            TaskChange::Append {
                index: 4,
                results: vec![TaskResult {
                    created_at: "2025-06-11T12:00:00.000Z".into(),
                    context: "[取货] 开始".into(),
                    status: TaskStatus::Running
                }]
            }
        );
        let replace: TaskEvent =
            serde_json::from_str(r#"{"task_record_id":"t","rev":1,"op":"replace","results":[]}"#)
                .unwrap();
        assert_eq!(replace.change, TaskChange::Replace { results: vec![] });
    }

    #[test]
    fn unknown_status_or_op_is_malformed() {
        let bad_status = r#"{"task_record_id":"t","rev":1,"op":"replace","results":[{"created_at":"x","context":"y","status":"DONE"}]}"#;
        assert!(serde_json::from_str::<TaskEvent>(bad_status).is_err());
        let bad_op = r#"{"task_record_id":"t","rev":1,"op":"truncate","results":[]}"#;
        assert!(serde_json::from_str::<TaskEvent>(bad_op).is_err());
        let no_rev = r#"{"task_record_id":"t","op":"replace","results":[]}"#;
        assert!(serde_json::from_str::<TaskEvent>(no_rev).is_err());
    }

    #[test]
    fn actions_round_trip_and_unknown_ones_pass_through() {
        for known in [
            "OCCUPY",
            "RELEASE",
            "LOCK",
            "UNLOCK",
            "ENABLE",
            "DISABLE",
            "SET_EMPTY_TRAY",
            "CLEAR_EMPTY_TRAY",
            "UPDATE",
        ] {
            let action = StatusAction::from(known);
            assert!(!matches!(action, StatusAction::Other(_)), "{known}");
            assert_eq!(
                serde_json::to_string(&action).unwrap(),
                format!("\"{known}\"")
            );
        }
        let other: StatusAction = serde_json::from_str("\"MOVE_TRAY\"").unwrap();
        assert_eq!(other, StatusAction::Other("MOVE_TRAY".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"MOVE_TRAY\"");
    }

    #[test]
    fn tips_carry_their_tag_last_and_need_it() {
        let tip = TaskTip {
            task_record_id: "t-1".into(),
            rev: 17,
        };
        let json = r#"{"task_record_id":"t-1","rev":17,"op":"tip"}"#;
        assert_eq!(serde_json::to_string(&tip).unwrap(), json);
        assert_eq!(serde_json::from_str::<TaskTip>(json).unwrap(), tip);
        for not_a_tip in [
            r#"{"task_record_id":"t-1","rev":17}"#,
            r#"{"task_record_id":"t-1","rev":17,"op":"append"}"#,
            r#"{"task_record_id":"t-1","rev":17,"op":"TIP"}"#,
            r#"{"task_record_id":"t-1","rev":17,"kind":"tip"}"#,
        ] {
            assert!(
                serde_json::from_str::<TaskTip>(not_a_tip).is_err(),
                "{not_a_tip}"
            );
        }
        // Today's hub reads a tip on an event subject as a malformed event, and nothing more.
        assert!(serde_json::from_str::<TaskEvent>(json).is_err());

        let tip = SceneTip {
            scene_id: "场景 1".into(),
            rev: 11,
        };
        let json = r#"{"scene_id":"场景 1","rev":11,"kind":"tip"}"#;
        assert_eq!(serde_json::to_string(&tip).unwrap(), json);
        assert_eq!(serde_json::from_str::<SceneTip>(json).unwrap(), tip);
        let escaped = r#"{"kind":"tip","rev":11,"scene_id":"\u573a\u666f 1"}"#;
        assert_eq!(serde_json::from_str::<SceneTip>(escaped).unwrap(), tip);
        assert!(
            serde_json::from_str::<SceneTip>(r#"{"scene_id":"s","rev":1,"kind":"remove"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<SceneEvent>(json).is_err());
    }

    #[test]
    fn snapshot_replies_round_trip() {
        let found = SnapshotReply::Found(TaskSnapshot {
            task_record_id: "t".into(),
            rev: 3,
            results: vec![],
        });
        let json = found.to_json().unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"found":true,"task_record_id":"t","rev":3,"results":[]}"#
        );
        assert_eq!(SnapshotReply::from_json(&json).unwrap(), found);
        let missing = SnapshotReply::<TaskSnapshot>::NotFound;
        assert_eq!(
            SnapshotReply::<TaskSnapshot>::from_json(&missing.to_json().unwrap()).unwrap(),
            missing
        );
        assert!(SnapshotReply::<TaskSnapshot>::from_json(br#"{"found":true}"#).is_err());
        for array in [&br#"[false]"#[..], br#" [true,"t",3,[]]"#] {
            assert!(SnapshotReply::<TaskSnapshot>::from_json(array).is_err());
        }
        assert_eq!(
            SnapshotReply::<TaskSnapshot>::from_json(b"\n {\"found\":false}").ok(),
            Some(SnapshotReply::NotFound)
        );
    }

    #[test]
    fn an_event_for_another_key_is_refused() {
        let json = br#"{"task_record_id":"other","rev":1,"op":"replace","results":[]}"#;
        let err = parse_keyed::<TaskEvent>(json, "mine").unwrap_err();
        assert_eq!(err.cause(), "wrong_key");
        assert!(parse_keyed::<TaskEvent>(json, "other").is_ok());
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_749_643_200_007);
        assert_eq!(timestamp_at(at), "2025-06-11T12:00:00.007Z");
    }
}

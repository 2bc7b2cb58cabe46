//! The shared golden vectors (`publisher-sdk/vectors/`, SPEC section 5): the Rust SDK must
//! agree with them byte for byte, as the Python SDK must, so that the two cannot drift apart.
//! Every assertion names the vector that failed.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rev::HybridClock;
use crate::subject::{decode_key, encode_key, validate_id, Subjects, DEFAULT_PREFIX};
use crate::wire::{
    timestamp_at, SceneChange, SceneEvent, SceneSnapshot, SceneTip, SnapshotReply, StatusAction,
    TaskChange, TaskEvent, TaskSnapshot, TaskStatus, TaskTip,
};

/// The files this test reads; a vector file it does not know fails [`every_vector_file_is_checked`].
const FILES: [&str; 5] = [
    "clock.json",
    "enums.json",
    "keys.json",
    "payloads.json",
    "timestamps.json",
];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Reads and parses one vector file, naming it when that fails.
fn load<T: DeserializeOwned>(file: &str) -> T {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{file} is not of the expected shape: {error}"))
}

#[test]
fn every_vector_file_is_checked() {
    let present: BTreeSet<String> = std::fs::read_dir(vectors_dir())
        .expect("the vectors directory")
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let checked: BTreeSet<String> = FILES.iter().map(|f| (*f).to_owned()).collect();
    assert_eq!(
        present, checked,
        "vectors/ and the files this test checks differ"
    );
}

/// `keys.json`.
#[derive(Deserialize)]
struct Keys {
    prefix: String,
    valid: Vec<ValidId>,
    invalid: Vec<InvalidIdCase>,
}

#[derive(Deserialize)]
struct ValidId {
    id: String,
    why: String,
    key: String,
    task_events: String,
    scene_events: String,
    task_snapshot: String,
    scene_snapshot: String,
}

#[derive(Deserialize)]
struct InvalidIdCase {
    id: String,
    reason: String,
}

#[test]
fn keys() {
    let keys: Keys = load("keys.json");
    assert_eq!(keys.prefix, DEFAULT_PREFIX, "keys.json: prefix");
    let subjects = Subjects::default();
    assert!(!keys.valid.is_empty() && !keys.invalid.is_empty());
    for case in &keys.valid {
        let name = format!("keys.json valid {:?} ({})", case.id, case.why);
        assert_eq!(validate_id(&case.id), Ok(()), "{name}: validate_id");
        assert_eq!(
            encode_key(&case.id),
            case.key.as_str(),
            "{name}: encode_key"
        );
        assert_eq!(
            decode_key(&case.key).as_deref(),
            Some(case.id.as_str()),
            "{name}: decode_key"
        );
        assert_eq!(
            subjects.task_events(&case.id),
            case.task_events,
            "{name}: task_events"
        );
        assert_eq!(
            subjects.scene_events(&case.id),
            case.scene_events,
            "{name}: scene_events"
        );
        assert_eq!(
            subjects.task_snapshot(&case.id),
            case.task_snapshot,
            "{name}: task_snapshot"
        );
        assert_eq!(
            subjects.scene_snapshot(&case.id),
            case.scene_snapshot,
            "{name}: scene_snapshot"
        );
        assert_eq!(
            subjects.snapshot_key(&case.task_snapshot).as_deref(),
            Some(case.id.as_str()),
            "{name}: snapshot_key"
        );
    }
    for case in &keys.invalid {
        let name = format!("keys.json invalid {:?} ({})", case.id, case.reason);
        let refusal = validate_id(&case.id).expect_err(&name);
        assert_eq!(refusal.reason(), case.reason, "{name}");
    }
}

/// `payloads.json`.
#[derive(Deserialize)]
struct Payloads {
    cases: Vec<PayloadCase>,
}

#[derive(Deserialize)]
struct PayloadCase {
    #[serde(rename = "type")]
    kind: String,
    why: String,
    value: Value,
    json: String,
}

impl PayloadCase {
    fn name(&self) -> String {
        format!("payloads.json {} ({})", self.kind, self.why)
    }

    /// Builds the typed value from `value`, writes it and compares with `json`, then reads
    /// `json` back and compares with the typed value. Returns the typed value.
    fn check<T>(&self) -> T
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let name = self.name();
        let typed: T = serde_json::from_value(self.value.clone())
            .unwrap_or_else(|error| panic!("{name}: value does not build the type: {error}"));
        let written = serde_json::to_string(&typed)
            .unwrap_or_else(|error| panic!("{name}: cannot serialize: {error}"));
        assert_eq!(written, self.json, "{name}: written bytes");
        let read: T = serde_json::from_str(&self.json)
            .unwrap_or_else(|error| panic!("{name}: json does not parse back: {error}"));
        assert_eq!(read, typed, "{name}: json parsed back");
        typed
    }

    /// [`check`](Self::check) for a snapshot reply, which has its own reader and writer
    /// (`found` decides the shape), exactly as the responder and the hub use them.
    fn check_reply<T>(&self) -> SnapshotReply<T>
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let name = self.name();
        let value = serde_json::to_vec(&self.value).expect("a JSON value serializes");
        let typed = SnapshotReply::<T>::from_json(&value)
            .unwrap_or_else(|error| panic!("{name}: value does not build the type: {error}"));
        let written = typed
            .to_json()
            .unwrap_or_else(|error| panic!("{name}: cannot serialize: {error}"));
        assert_eq!(
            String::from_utf8(written).expect("serde_json writes UTF-8"),
            self.json,
            "{name}: written bytes"
        );
        let read = SnapshotReply::<T>::from_json(self.json.as_bytes())
            .unwrap_or_else(|error| panic!("{name}: json does not parse back: {error}"));
        assert_eq!(read, typed, "{name}: json parsed back");
        typed
    }
}

#[test]
fn payloads() {
    let payloads: Payloads = load("payloads.json");
    assert!(!payloads.cases.is_empty());
    for case in &payloads.cases {
        let name = case.name();
        // Each type must also be the variant it names, not merely some value of the Rust type.
        let right_variant = match case.kind.as_str() {
            "task_append" => matches!(case.check::<TaskEvent>().change, TaskChange::Append { .. }),
            "task_replace" => {
                matches!(case.check::<TaskEvent>().change, TaskChange::Replace { .. })
            }
            "task_tip" => {
                case.check::<TaskTip>();
                true
            }
            "scene_status_change" => matches!(
                case.check::<SceneEvent>().change,
                SceneChange::StatusChange { .. }
            ),
            "scene_upsert" => matches!(
                case.check::<SceneEvent>().change,
                SceneChange::Upsert { .. }
            ),
            "scene_remove" => matches!(
                case.check::<SceneEvent>().change,
                SceneChange::Remove { .. }
            ),
            "scene_tip" => {
                case.check::<SceneTip>();
                true
            }
            "task_snapshot" => {
                matches!(case.check_reply::<TaskSnapshot>(), SnapshotReply::Found(_))
            }
            "scene_snapshot" => {
                matches!(case.check_reply::<SceneSnapshot>(), SnapshotReply::Found(_))
            }
            "not_found" => matches!(case.check_reply::<TaskSnapshot>(), SnapshotReply::NotFound),
            other => panic!("{name}: unknown payload type {other:?}; teach this test"),
        };
        assert!(right_variant, "{name}: parsed as another variant");
    }
}

/// One step of `clock.json`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum ClockStep {
    /// The wall clock reads `now`; the next rev must be `rev`.
    Now { now: u64, rev: u64 },
    /// A rev found elsewhere.
    Observe { observe: u64 },
}

#[derive(Deserialize)]
struct Clock {
    steps: Vec<ClockStep>,
}

#[test]
fn clock() {
    let clock: Clock = load("clock.json");
    assert!(!clock.steps.is_empty());
    let hybrid = HybridClock::new();
    for (index, step) in clock.steps.iter().enumerate() {
        match *step {
            ClockStep::Now { now, rev } => assert_eq!(
                hybrid.next_at(now),
                rev,
                "clock.json step {index} ({step:?})"
            ),
            ClockStep::Observe { observe } => hybrid.observe(observe),
        }
    }
}

/// `timestamps.json`.
#[derive(Deserialize)]
struct Timestamps {
    cases: Vec<TimestampCase>,
}

#[derive(Deserialize)]
struct TimestampCase {
    unix_micros: u64,
    timestamp: String,
}

#[test]
fn timestamps() {
    let timestamps: Timestamps = load("timestamps.json");
    assert!(!timestamps.cases.is_empty());
    for case in &timestamps.cases {
        let at = UNIX_EPOCH + Duration::from_micros(case.unix_micros);
        assert_eq!(
            timestamp_at(at),
            case.timestamp,
            "timestamps.json unix_micros {}",
            case.unix_micros
        );
    }
}

/// `enums.json`.
#[derive(Deserialize)]
struct Enums {
    task_statuses: Vec<String>,
    status_actions: Vec<String>,
}

#[test]
fn enums() {
    let enums: Enums = load("enums.json");
    for name in &enums.task_statuses {
        let status: TaskStatus = serde_json::from_value(Value::String(name.clone()))
            .unwrap_or_else(|error| panic!("enums.json task status {name:?}: {error}"));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            Value::String(name.clone()),
            "enums.json task status {name:?}"
        );
    }
    for name in &enums.status_actions {
        let action = StatusAction::from(name.as_str());
        assert!(
            !matches!(action, StatusAction::Other(_)),
            "enums.json status action {name:?} is not a known action"
        );
        assert_eq!(action.as_str(), name, "enums.json status action {name:?}");
        let read: StatusAction = serde_json::from_value(Value::String(name.clone())).unwrap();
        assert_eq!(read, action, "enums.json status action {name:?}");
        assert_eq!(
            serde_json::to_value(&action).unwrap(),
            Value::String(name.clone()),
            "enums.json status action {name:?}"
        );
    }

    // And the other way: every name the SDK knows is in the vectors, so that a variant added on
    // one side only fails here.
    let statuses = [TaskStatus::Success, TaskStatus::Failed, TaskStatus::Running];
    let known_statuses: BTreeSet<String> = statuses
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        known_statuses,
        enums.task_statuses.iter().cloned().collect(),
        "enums.json task_statuses and the SDK's TaskStatus differ"
    );
    let actions = [
        StatusAction::Occupy,
        StatusAction::Release,
        StatusAction::Lock,
        StatusAction::Unlock,
        StatusAction::Enable,
        StatusAction::Disable,
        StatusAction::SetEmptyTray,
        StatusAction::ClearEmptyTray,
        StatusAction::Update,
    ];
    let known_actions: BTreeSet<String> = actions.iter().map(|a| a.as_str().to_owned()).collect();
    assert_eq!(
        known_actions,
        enums.status_actions.iter().cloned().collect(),
        "enums.json status_actions and the SDK's StatusAction differ"
    );
}

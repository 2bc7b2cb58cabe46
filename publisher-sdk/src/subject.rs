//! NATS subjects of the contract, the `<key>` encoding that keeps any id a single, literal
//! subject token (SPEC section 3), and what makes an id valid at all (SPEC section 2.3).

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "vwed";

/// Longest id that is used verbatim as a subject token.
const MAX_PLAIN_KEY_LEN: usize = 128;

/// Marks an encoded key; `~` cannot start a plain key, so the two forms never collide.
const ENCODED_MARK: char = '~';

/// Longest valid id, in bytes of UTF-8 (SPEC section 2.3). The hub refuses a client asking for a
/// longer one, so the SDK refuses to publish one that no client could ever watch.
pub const MAX_ID_BYTES: usize = 256;

/// Why an id is not valid (SPEC section 2.3). The hub refuses such an id from a client with a
/// message of its own; the SDK refuses to publish under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidId {
    /// The id is empty.
    #[error("the id is empty")]
    Empty,
    /// The id is over [`MAX_ID_BYTES`] bytes of UTF-8.
    #[error("the id is longer than {MAX_ID_BYTES} bytes of UTF-8")]
    TooLong,
    /// The id holds a control character ([`char::is_control`]: C0, DEL or C1).
    #[error("the id holds a control character")]
    ControlCharacter,
}

impl InvalidId {
    /// A short, stable name for the cause, fit for a metric label or a log field; the shared
    /// test vectors (`vectors/keys.json`) name the causes the same way.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidId::Empty => "empty",
            InvalidId::TooLong => "too_long",
            InvalidId::ControlCharacter => "control_character",
        }
    }
}

/// Checks that `id` is a valid task record id or scene id (SPEC section 2.3): not empty, at most
/// [`MAX_ID_BYTES`] bytes of UTF-8, and without control characters. Any other id is valid, dots,
/// wildcards and all; [`encode_key`] keeps it a single subject token.
///
/// When several rules are broken, the first in that order is reported.
pub fn validate_id(id: &str) -> Result<(), InvalidId> {
    if id.is_empty() {
        Err(InvalidId::Empty)
    } else if id.len() > MAX_ID_BYTES {
        Err(InvalidId::TooLong)
    } else if id.chars().any(char::is_control) {
        Err(InvalidId::ControlCharacter)
    } else {
        Ok(())
    }
}

/// Checks a subject prefix given on a command line or in configuration: dot-separated tokens of
/// letters, digits, `_` and `-`, so that a prefix can never act as a wildcard. Returns it owned,
/// as a `clap` value parser wants.
pub fn parse_prefix(text: &str) -> Result<String, String> {
    let valid = text.split('.').all(|token| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(
            "use dot-separated tokens of letters, digits, '_' and '-' (e.g. vwed or prod.vwed)"
                .into(),
        )
    }
}

/// Turns an id into its subject token: the id itself when it is `[A-Za-z0-9_-]{1,128}`, else `~`
/// and the unpadded base64url of its UTF-8 bytes. Either way the token holds no `.`, `*`, `>` or
/// whitespace, so no id can become a wildcard or reach another key's subject.
pub fn encode_key(id: &str) -> Cow<'_, str> {
    let plain = !id.is_empty()
        && id.len() <= MAX_PLAIN_KEY_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Cow::Borrowed(id)
    } else {
        let mut token = String::with_capacity(1 + id.len().div_ceil(3) * 4);
        token.push(ENCODED_MARK);
        URL_SAFE_NO_PAD.encode_string(id.as_bytes(), &mut token);
        Cow::Owned(token)
    }
}

/// Turns a subject token back into the id; `None` when the token is not a valid encoding.
pub fn decode_key(token: &str) -> Option<String> {
    match token.strip_prefix(ENCODED_MARK) {
        Some(encoded) => {
            let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => (!token.is_empty()).then(|| token.to_owned()),
    }
}

/// The subjects of one deployment, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    /// Lets several environments share one NATS cluster without hearing each other.
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// Subjects under `prefix` (for example `vwed`, or `staging.vwed`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix these subjects start with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a task record's events are published: `<prefix>.task.<key>.execution`.
    pub fn task_events(&self, task_record_id: &str) -> String {
        format!(
            "{}.task.{}.execution",
            self.prefix,
            encode_key(task_record_id)
        )
    }

    /// Where a scene's events are published: `<prefix>.scene.<key>.storage`.
    pub fn scene_events(&self, scene_id: &str) -> String {
        format!("{}.scene.{}.storage", self.prefix, encode_key(scene_id))
    }

    /// Where the hub asks for a task record's snapshot: `<prefix>.snapshot.task.<key>`.
    pub fn task_snapshot(&self, task_record_id: &str) -> String {
        format!(
            "{}.snapshot.task.{}",
            self.prefix,
            encode_key(task_record_id)
        )
    }

    /// Where the hub asks for a scene's snapshot: `<prefix>.snapshot.scene.<key>`.
    pub fn scene_snapshot(&self, scene_id: &str) -> String {
        format!("{}.snapshot.scene.{}", self.prefix, encode_key(scene_id))
    }

    /// The wildcard a task snapshot responder listens on.
    pub fn all_task_snapshots(&self) -> String {
        format!("{}.snapshot.task.*", self.prefix)
    }

    /// The wildcard a scene snapshot responder listens on.
    pub fn all_scene_snapshots(&self) -> String {
        format!("{}.snapshot.scene.*", self.prefix)
    }

    /// The id named by a snapshot request subject (the token after the prefix's `snapshot.<kind>.`).
    pub fn snapshot_key(&self, subject: &str) -> Option<String> {
        let token = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".snapshot.")?
            .split_once('.')?
            .1;
        if token.contains('.') {
            return None;
        }
        decode_key(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_must_be_literal_subject_tokens() {
        assert!(parse_prefix("vwed").is_ok());
        assert!(parse_prefix("prod.vwed-2").is_ok());
        for bad in ["", "a..b", "*", "a.>", "a b", ".a"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_checked_in_the_order_of_the_rules() {
        assert_eq!(validate_id("t-1"), Ok(()));
        assert_eq!(validate_id("a.b *>"), Ok(()));
        assert_eq!(validate_id(&"x".repeat(MAX_ID_BYTES)), Ok(()));
        assert_eq!(validate_id(""), Err(InvalidId::Empty));
        // Bytes count, not characters: 86 three-byte characters are 258 bytes.
        assert_eq!(validate_id(&"仓".repeat(86)), Err(InvalidId::TooLong));
        assert_eq!(validate_id(&"\n".repeat(300)), Err(InvalidId::TooLong));
        assert_eq!(validate_id("a\u{85}"), Err(InvalidId::ControlCharacter));
        assert_eq!(validate_id("a\u{2028}b"), Ok(()));
    }

    #[test]
    fn plain_ids_stay_as_they_are() {
        assert_eq!(encode_key("t-1"), "t-1");
        assert_eq!(encode_key("Task_42-x"), "Task_42-x");
        assert!(matches!(encode_key("abc"), Cow::Borrowed(_)));
        let longest = "a".repeat(128);
        assert_eq!(encode_key(&longest), longest.as_str());
    }

    #[test]
    fn dangerous_ids_are_encoded_into_one_safe_token() {
        for id in [
            "a.b",
            "*",
            ">",
            "a b",
            "仓库一号",
            "~x",
            "",
            "a\tb",
            &"a".repeat(129),
        ] {
            let token = encode_key(id);
            assert!(token.starts_with('~'), "{id:?} -> {token}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-~".contains(&b)),
                "{id:?} -> {token}"
            );
            assert_eq!(decode_key(&token).as_deref(), Some(id), "{id:?}");
        }
        assert_eq!(encode_key("a.b"), "~YS5i");
        assert_eq!(encode_key("*"), "~Kg");
    }

    #[test]
    fn distinct_ids_get_distinct_subjects() {
        let s = Subjects::default();
        assert_eq!(s.task_events("t-1"), "vwed.task.t-1.execution");
        assert_eq!(s.scene_events("a.b"), "vwed.scene.~YS5i.storage");
        assert_ne!(s.task_events("YS5i"), s.task_events("a.b"));
        assert_eq!(s.task_snapshot(">"), "vwed.snapshot.task.~Pg");
    }

    #[test]
    fn snapshot_subjects_decode_back_to_the_id() {
        let s = Subjects::new("staging.vwed");
        for id in ["t-1", "a.b", "*", "场景 1"] {
            assert_eq!(s.snapshot_key(&s.task_snapshot(id)).as_deref(), Some(id));
            assert_eq!(s.snapshot_key(&s.scene_snapshot(id)).as_deref(), Some(id));
        }
        assert_eq!(s.snapshot_key("other.snapshot.task.x"), None);
        assert_eq!(s.snapshot_key("staging.vwed.snapshot.task.~!!"), None);
    }
}

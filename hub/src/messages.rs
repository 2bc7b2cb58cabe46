//! The client side of the wire: the server messages of the API document, built once and shared
//! by every connection that receives them, and the client messages the hub understands.
//!
//! Server messages are assembled from pre-escaped JSON pieces rather than through a derived
//! struct, so that a state's (possibly large) `data`, rendered once, is wrapped without being
//! serialized again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use vwed_publisher::timestamp_now;

/// Which of the two entity kinds a topic or endpoint is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A task record, keyed by `task_record_id`.
    Task,
    /// A scene's storage locations, keyed by `scene_id`.
    Scene,
}

impl Kind {
    /// The field that names the key in every message of this kind.
    pub fn id_field(self) -> &'static str {
        match self {
            Kind::Task => "task_record_id",
            Kind::Scene => "scene_id",
        }
    }

    /// The `type` of this kind's state message.
    pub fn update_type(self) -> &'static str {
        match self {
            Kind::Task => "task_execution_update",
            Kind::Scene => "storage_location_update",
        }
    }

    /// The fixed `message` of this kind's state message.
    pub fn update_message(self) -> &'static str {
        match self {
            Kind::Task => "成功获取任务记录执行结果",
            Kind::Scene => "成功获取库位状态",
        }
    }

    /// A short name for logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Scene => "scene",
        }
    }

    /// Error text when the owner says the key does not exist.
    pub fn not_found_message(self, id: &str) -> String {
        match self {
            Kind::Task => format!("任务记录不存在: {id}"),
            Kind::Scene => format!("场景不存在: {id}"),
        }
    }

    /// Error text while the owner does not answer snapshot requests.
    pub fn unavailable_message(self) -> &'static str {
        match self {
            Kind::Task => "暂时无法获取任务记录状态,正在重试",
            Kind::Scene => "暂时无法获取库位状态,正在重试",
        }
    }
}

/// One outgoing WebSocket text message. Cloning shares the bytes, so one rendered message can
/// sit in many connections' queues at the cost of a reference count each; its compressed form
/// (SPEC 2.6) is made at most once and shared the same way.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message: what every client reads, and what goes out to those that did not
    /// negotiate compression.
    text: Utf8Bytes,
    /// The deflated payload, made the first time a connection that negotiated compression
    /// writes this message. Absent for messages too short ever to be compressed, which then
    /// cost no allocation for it.
    deflated: Option<Arc<Deflated>>,
}

/// A message's deflated payload, made once.
#[derive(Debug, Default)]
struct Deflated {
    /// Set by the connection that makes the payload: others that write the message meanwhile
    /// send it plain (RFC 7692 lets every message choose) rather than block their thread.
    claimed: AtomicBool,
    /// The payload once made; inside, `None` when deflating does not make it shorter.
    payload: OnceLock<Option<Bytes>>,
}

impl Frame {
    /// Messages shorter than this are never compressed, whatever the threshold: deflate's
    /// block overhead eats what little they would save.
    pub const COMPRESSIBLE_FROM: usize = 64;

    /// A frame of a fixed text.
    pub fn from_static(text: &'static str) -> Self {
        Self::from(Utf8Bytes::from_static(text))
    }

    /// The message's text.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The message's length in bytes, before compression.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether the message is empty (never, for messages the hub renders).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The message's text, shared.
    pub fn text(&self) -> &Utf8Bytes {
        &self.text
    }

    /// The message's deflated payload, made with `deflate` on the first call and shared by
    /// every later one; `None` when the message goes plain: too short, no shorter deflated,
    /// or being deflated by another connection at this moment (which this one does not wait
    /// for: a scene's state takes a millisecond or more, and the runtime has few threads).
    pub fn deflated(&self, deflate: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<&Bytes> {
        let cell = self.deflated.as_ref()?;
        if let Some(made) = cell.payload.get() {
            return made.as_ref();
        }
        if cell.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        cell.payload
            .get_or_init(|| deflate(self.text.as_bytes()))
            .as_ref()
    }
}

impl From<Utf8Bytes> for Frame {
    fn from(text: Utf8Bytes) -> Self {
        let deflated = (text.len() >= Self::COMPRESSIBLE_FROM).then(Default::default);
        Self { text, deflated }
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self::from(Utf8Bytes::from(text))
    }
}

/// The parts of every message that name one key, escaped once per topic or connection.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Which entity kind the key is.
    kind: Kind,
    /// `"<id field>":<id as a JSON string>`
    id_member: String,
}

impl Envelope {
    /// The envelope of messages about `id`.
    pub fn new(kind: Kind, id: &str) -> Self {
        let id_member = format!("\"{}\":{}", kind.id_field(), json_string(id));
        Self { kind, id_member }
    }

    /// A state message around `data` (JSON), stamped now.
    pub fn state(&self, data: &[u8]) -> Frame {
        let kind = self.kind;
        let stamp = timestamp_now();
        let (head, tail) = (
            format!(
                "{{\"type\":\"{}\",{},\"timestamp\":\"{stamp}\",\"message\":\"{}\",\"data\":",
                kind.update_type(),
                self.id_member,
                kind.update_message()
            ),
            "}",
        );
        let mut text = String::with_capacity(head.len() + data.len() + tail.len());
        text.push_str(&head);
        // `data` comes from serde_json, which writes UTF-8.
        text.push_str(std::str::from_utf8(data).unwrap_or("null"));
        text.push_str(tail);
        Frame::from(text)
    }

    /// An `error` message about this key.
    pub fn error(&self, message: &str) -> Frame {
        Frame::from(format!(
            "{{\"type\":\"error\",{},\"timestamp\":\"{}\",\"message\":{}}}",
            self.id_member,
            timestamp_now(),
            json_string(message)
        ))
    }
}

/// A JSON `pong`.
pub fn pong() -> Frame {
    Frame::from(format!(
        "{{\"type\":\"pong\",\"timestamp\":\"{}\"}}",
        timestamp_now()
    ))
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    // Serializing a `str` cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// What a client can ask of the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// The text `ping`: answered with the text `pong`.
    TextPing,
    /// `{"type":"ping"}`: answered with a JSON `pong`.
    Ping,
    /// `{"type":"get_status"}`: answered with the current state at once.
    GetStatus,
}

/// Why a client message was refused; each becomes an `error` message and the connection stays.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientMessageError {
    /// Not JSON, or JSON without a string `type`.
    #[error("无效的JSON消息格式")]
    InvalidJson,
    /// A `type` the API does not have.
    #[error("未知的消息类型: {0}")]
    UnknownType(String),
    /// A binary frame.
    #[error("不支持二进制消息,请发送JSON文本消息")]
    Binary,
    /// More messages than the per-connection limit allows; dropped until the client slows.
    #[error("消息发送过于频繁,请降低发送频率")]
    TooFrequent,
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow, rename = "type")]
    kind: std::borrow::Cow<'a, str>,
}

/// Parses one text message from a client.
pub fn parse_client_text(text: &str) -> Result<ClientRequest, ClientMessageError> {
    if text == "ping" {
        return Ok(ClientRequest::TextPing);
    }
    // A derived struct also reads a JSON array by position, so `["ping"]` would pass for
    // `{"type":"ping"}`; the API's requests are objects.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(ClientMessageError::InvalidJson);
    }
    let typed: Typed<'_> =
        serde_json::from_str(text).map_err(|_| ClientMessageError::InvalidJson)?;
    match typed.kind.as_ref() {
        "ping" => Ok(ClientRequest::Ping),
        "get_status" => Ok(ClientRequest::GetStatus),
        other => Err(ClientMessageError::UnknownType(truncate(other, 64))),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(frame: Frame) -> Value {
        serde_json::from_str(frame.as_str()).unwrap()
    }

    #[test]
    fn a_frame_is_deflated_once_and_a_writer_finding_it_under_way_goes_plain() {
        let frame = Frame::from("库位".repeat(200));
        let shared = frame.clone();
        let mut made = 0;
        let first = frame.deflated(|_| {
            // Another connection writes the same message meanwhile: it does not wait.
            assert!(shared.deflated(|_| unreachable!()).is_none());
            made += 1;
            Some(Bytes::from_static(b"deflated"))
        });
        assert_eq!(first.map(|b| b.as_ref()), Some(&b"deflated"[..]));
        let later = shared.deflated(|_| unreachable!());
        assert_eq!(later.map(|b| b.as_ref()), Some(&b"deflated"[..]));
        assert_eq!(made, 1);
        assert!(Frame::from_static("pong")
            .deflated(|_| unreachable!())
            .is_none());
    }

    #[test]
    fn state_messages_have_the_documented_fields_in_order() {
        let envelope = Envelope::new(Kind::Task, "t-\"1\"");
        let text = envelope.state(b"[]");
        let keys: Vec<&str> = [
            "\"type\"",
            "\"task_record_id\"",
            "\"timestamp\"",
            "\"message\"",
            "\"data\"",
        ]
        .into_iter()
        .collect();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.as_str().find(k).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{}",
            text.as_str()
        );
        let value = parse(envelope.state(b"[]"));
        assert_eq!(value["type"], "task_execution_update");
        assert_eq!(value["task_record_id"], "t-\"1\"");
        assert_eq!(value["message"], "成功获取任务记录执行结果");
        assert_eq!(value["data"], serde_json::json!([]));
        let stamp = value["timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), 24, "{stamp}");
        assert!(stamp.ends_with('Z'));
    }

    #[test]
    fn errors_name_the_key_of_their_kind() {
        let value = parse(Envelope::new(Kind::Scene, "场景").error("坏了"));
        assert_eq!(value["type"], "error");
        assert_eq!(value["scene_id"], "场景");
        assert_eq!(value["message"], "坏了");
        assert!(value.get("task_record_id").is_none());
    }

    #[test]
    fn client_messages() {
        assert_eq!(parse_client_text("ping"), Ok(ClientRequest::TextPing));
        assert_eq!(
            parse_client_text(r#"{"type":"ping"}"#),
            Ok(ClientRequest::Ping)
        );
        assert_eq!(
            parse_client_text(r#"{"type":"get_status","timestamp":"x","extra":[1]}"#),
            Ok(ClientRequest::GetStatus)
        );
        assert_eq!(
            parse_client_text("pong"),
            Err(ClientMessageError::InvalidJson)
        );
        assert_eq!(
            parse_client_text("{}"),
            Err(ClientMessageError::InvalidJson)
        );
        assert_eq!(
            parse_client_text(r#"{"type":1}"#),
            Err(ClientMessageError::InvalidJson)
        );
        assert_eq!(
            parse_client_text("[1,2]"),
            Err(ClientMessageError::InvalidJson)
        );
        for array in [r#"["ping"]"#, r#" ["get_status", 1]"#] {
            assert_eq!(
                parse_client_text(array),
                Err(ClientMessageError::InvalidJson),
                "{array}"
            );
        }
        assert_eq!(
            parse_client_text(" \r\n\t{\"type\":\"ping\"}"),
            Ok(ClientRequest::Ping)
        );
        assert_eq!(
            parse_client_text(r#"{"type":"subscribe"}"#),
            Err(ClientMessageError::UnknownType("subscribe".into()))
        );
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(1000));
        match parse_client_text(&long) {
            Err(ClientMessageError::UnknownType(t)) => assert!(t.chars().count() <= 65),
            other => panic!("{other:?}"),
        }
    }
}

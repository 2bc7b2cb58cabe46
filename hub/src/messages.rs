//! The client side of the wire: the server messages of the API document, built once and shared
//! by every connection that receives them, and the client messages the hub understands.
//!
//! Server messages are assembled from pre-escaped JSON pieces rather than through a derived
//! struct, so that a state message can be rendered once and stamped with its send time per
//! connection without serializing its (possibly large) `data` again.

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Deserialize;
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

/// One outgoing WebSocket message, cheap to clone into many connections' queues.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A finished text message (an event, a status change, an error).
    Text(Utf8Bytes),
    /// A state message, stamped with the time it is written: `head` + timestamp + `tail`.
    /// The shared parts hold the rendered `data`, so queuing one costs two reference counts.
    Stamped {
        /// `{"type":...,"<id field>":...,"timestamp":"`
        head: Bytes,
        /// `","message":...,"data":...}`
        tail: Bytes,
    },
}

impl Frame {
    /// The message text as it goes on the wire.
    pub fn into_text(self) -> Utf8Bytes {
        match self {
            Frame::Text(text) => text,
            Frame::Stamped { head, tail } => {
                let stamp = timestamp_now();
                let mut text = String::with_capacity(head.len() + stamp.len() + tail.len());
                // Both halves were built from `str`s by `Envelope`, so they are UTF-8.
                text.push_str(std::str::from_utf8(&head).unwrap_or_default());
                text.push_str(&stamp);
                text.push_str(std::str::from_utf8(&tail).unwrap_or_default());
                Utf8Bytes::from(text)
            }
        }
    }
}

/// The parts of every message that name one key, escaped once per topic or connection.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Which entity kind the key is.
    kind: Kind,
    /// `"<id field>":<id as a JSON string>`
    id_member: String,
    /// The head of this key's state message, shared by every state frame.
    state_head: Bytes,
}

impl Envelope {
    /// The envelope of messages about `id`.
    pub fn new(kind: Kind, id: &str) -> Self {
        let id_member = format!("\"{}\":{}", kind.id_field(), json_string(id));
        let state_head = Bytes::from(format!(
            "{{\"type\":\"{}\",{id_member},\"timestamp\":\"",
            kind.update_type()
        ));
        Self {
            kind,
            id_member,
            state_head,
        }
    }

    /// A state message around `data` (JSON), stamped when it is written.
    pub fn state(&self, data: &[u8]) -> Frame {
        Frame::Stamped {
            head: self.state_head.clone(),
            tail: self.state_tail(data),
        }
    }

    /// The tail of a state message around `data`; the part that is rendered once per change.
    pub fn state_tail(&self, data: &[u8]) -> Bytes {
        let message = self.kind.update_message();
        let mut tail = Vec::with_capacity(data.len() + message.len() + 24);
        tail.extend_from_slice(b"\",\"message\":\"");
        tail.extend_from_slice(message.as_bytes());
        tail.extend_from_slice(b"\",\"data\":");
        tail.extend_from_slice(data);
        tail.push(b'}');
        Bytes::from(tail)
    }

    /// A state message stamped now, as one finished frame (for events rendered once).
    pub fn state_now(&self, data: &[u8]) -> Frame {
        Frame::Text(self.state(data).into_text())
    }

    /// Builds a stamped frame from a tail made by [`state_tail`](Self::state_tail).
    pub fn stamped(&self, tail: Bytes) -> Frame {
        Frame::Stamped {
            head: self.state_head.clone(),
            tail,
        }
    }

    /// An `error` message about this key.
    pub fn error(&self, message: &str) -> Frame {
        Frame::Text(Utf8Bytes::from(format!(
            "{{\"type\":\"error\",{},\"timestamp\":\"{}\",\"message\":{}}}",
            self.id_member,
            timestamp_now(),
            json_string(message)
        )))
    }

    /// The `"<id field>":"<id>"` member, for messages of other types about this key.
    pub fn id_member(&self) -> &str {
        &self.id_member
    }
}

/// A JSON `pong`.
pub fn pong() -> Frame {
    Frame::Text(Utf8Bytes::from(format!(
        "{{\"type\":\"pong\",\"timestamp\":\"{}\"}}",
        timestamp_now()
    )))
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
        serde_json::from_str(frame.into_text().as_str()).unwrap()
    }

    #[test]
    fn state_messages_have_the_documented_fields_in_order() {
        let envelope = Envelope::new(Kind::Task, "t-\"1\"");
        let text = envelope.state(b"[]").into_text();
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
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
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

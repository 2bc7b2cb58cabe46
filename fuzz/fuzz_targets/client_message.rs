//! What a client sends over the socket: any text frame goes through `parse_client_text`, and a
//! refused one becomes an `error` message.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use vwed_hub::messages::{parse_client_text, ClientRequest, Envelope, Kind};

/// Longest error text the hub may send back for one message: the longest fixed text plus an
/// echoed `type` of at most 64 characters and an ellipsis.
const MAX_ERROR_CHARS: usize = 100;

fuzz_target!(|data: &[u8]| {
    // Text frames reach the parser only as UTF-8: tungstenite refuses the rest (close 1007).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_text(text) {
        Ok(ClientRequest::TextPing) => assert_eq!(text, "ping"),
        Ok(request) => {
            // Only a JSON object whose `type` says so is a request. (Its other members are
            // skipped, not parsed, as the hub skips them: a `Value` would refuse a number like
            // 1e999 there, which the hub rightly ignores.)
            let object: Object = serde_json::from_str(text).expect("a JSON object with a type");
            let expected = match request {
                ClientRequest::Ping => "ping",
                _ => "get_status",
            };
            assert_eq!(object.0.get("type").map(String::as_str), Some(expected));
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.chars().count() <= MAX_ERROR_CHARS,
                "error too long: {message:?}"
            );
            let frame = Envelope::new(Kind::Task, "t-1").error(&message);
            let value: Value = serde_json::from_str(frame.as_str()).expect("the error is JSON");
            assert_eq!(value["type"], "error");
            assert_eq!(value["message"], message.as_str());
        }
    }
});

/// A JSON object's string members, the rest skipped; refuses anything but an object.
struct Object(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut members = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "type" {
                        members.insert(key, map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Object(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

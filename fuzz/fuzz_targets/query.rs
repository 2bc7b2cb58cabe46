//! What a client puts in the URL: the endpoint's path id and query, through `endpoint::parse`,
//! and the subject token the id becomes.
//!
//! Input: the first byte picks the endpoint (modulo 4); the rest, as UTF-8, is the raw path id,
//! then optionally `?` and the raw query. E.g. `2s-1?interval=5&is_locked=true`.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use vwed_hub::messages::Envelope;
use vwed_hub::view::LocationFilter;
use vwed_hub::ws::endpoint::{parse, parse_id, MAX_ID_BYTES};
use vwed_hub::ws::Endpoint;
use vwed_publisher::{decode_key, encode_key};

/// Longest error text for a bad request: the longest fixed text plus an echoed value of at most
/// 64 characters and an ellipsis.
const MAX_ERROR_CHARS: usize = 140;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The hub gets the path and query as `&str` from the HTTP layer.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let endpoint = Endpoint::ALL[usize::from(selector) % Endpoint::ALL.len()];
    let (raw_id, query) = match text.split_once('?') {
        Some((id, query)) => (id, Some(query)),
        None => (text, None),
    };
    let field = endpoint.kind().id_field();
    match parse(endpoint, raw_id, query) {
        Ok(watch) => {
            assert_eq!(watch.endpoint, endpoint);
            let id = &watch.id;
            assert!(!id.is_empty() && id.len() <= MAX_ID_BYTES, "{id:?}");
            assert!(!id.chars().any(char::is_control), "{id:?}");
            assert_eq!(
                percent_decode_str(raw_id).decode_utf8().ok().as_deref(),
                Some(id.as_str())
            );
            // The id round-trips through a URL...
            let encoded = utf8_percent_encode(id, NON_ALPHANUMERIC).to_string();
            assert_eq!(parse_id(field, &encoded).as_ref(), Ok(id));
            // ...and through its subject token, which can never be a wildcard or span tokens.
            let token = encode_key(id);
            assert!(
                !token.is_empty()
                    && !token
                        .chars()
                        .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace()),
                "{token:?}"
            );
            assert_eq!(decode_key(&token).as_ref(), Some(id));
            match (endpoint, watch.interval) {
                (Endpoint::TaskBroadcast | Endpoint::SceneBroadcast, None) => {}
                (Endpoint::TaskRealtime | Endpoint::SceneRealtime, Some(interval)) => assert!(
                    (Duration::from_secs(1)..=Duration::from_secs(30)).contains(&interval),
                    "{interval:?}"
                ),
                other => panic!("interval {other:?}"),
            }
            if endpoint != Endpoint::SceneRealtime {
                assert_eq!(watch.filter, LocationFilter::default());
            }
        }
        Err(invalid) => {
            let message = invalid.to_string();
            assert!(
                message.chars().count() <= MAX_ERROR_CHARS,
                "error too long: {message:?}"
            );
            let frame = Envelope::new(endpoint.kind(), raw_id).error(&message);
            let value: Value = serde_json::from_str(frame.as_str()).expect("the error is JSON");
            assert_eq!(value["message"], message.as_str());
            assert_eq!(value[field], raw_id);
        }
    }
});

//! What a publisher sends over NATS: a snapshot reply and an event, decoded as the hub decodes
//! them (`view::parse_snapshot`, `view::parse_event`, on the SDK's `wire` types), then applied
//! and rendered for clients.
//!
//! Input: the first byte picks the kind (even: task `t-1`, odd: scene `s-1`); the rest is a
//! snapshot reply, a 0xFF byte (which no UTF-8 text holds), and an event. Without 0xFF, the
//! rest is an event for a key with no snapshot yet.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vwed_hub::messages::Envelope;
use vwed_hub::view::{parse_event, parse_snapshot, LocationFilter, SceneView, TaskView, View};
use vwed_publisher::wire::Keyed;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (snapshot, event) = match rest.iter().position(|&b| b == 0xff) {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if selector % 2 == 0 {
        check::<TaskView>("t-1", snapshot, event, &[()]);
    } else {
        let filters = [
            LocationFilter::default(),
            LocationFilter {
                is_occupied: Some(true),
                station_name: Some("S1".into()),
                ..LocationFilter::default()
            },
        ];
        check::<SceneView>("s-1", snapshot, event, &filters);
    }
});

fn check<V: View>(id: &str, snapshot: Option<&[u8]>, event: &[u8], filters: &[V::Filter]) {
    let envelope = Envelope::new(V::KIND, id);
    let mut view = V::default();
    if let Some(payload) = snapshot {
        match parse_snapshot::<V>(id, payload) {
            Ok(found) => {
                assert!(is_object(payload), "a snapshot reply is an object");
                if let Some((_rev, snapshot_view)) = found {
                    view = snapshot_view;
                }
            }
            Err(error) => assert!(matches!(error.cause(), "malformed" | "wrong_key" | "broken_chain")),
        }
    }
    rendered_is_json(&view, &envelope, filters);
    let event_payload = event;
    let event = match parse_event::<V>(id, event) {
        Ok(event) => event,
        Err(error) => {
            assert!(matches!(error.cause(), "malformed" | "wrong_key" | "broken_chain"));
            return;
        }
    };
    assert_eq!(event.key(), id, "an accepted event is the key's own");
    assert!(is_object(event_payload), "an event is an object");
    for frame in V::event_frames(&envelope, &event) {
        let value: Value = serde_json::from_str(frame.as_str()).expect("a broadcast frame is JSON");
        assert_eq!(value[V::KIND.id_field()], id);
    }
    let _ = view.apply(&event);
    rendered_is_json(&view, &envelope, filters);
    // Applying the same event twice changes nothing (the View contract).
    let before: Vec<Vec<u8>> = filters.iter().map(|f| view.render(f)).collect();
    let _ = view.apply(&event);
    let after: Vec<Vec<u8>> = filters.iter().map(|f| view.render(f)).collect();
    assert_eq!(before, after, "applying an event twice changed the view");
}

fn rendered_is_json<V: View>(view: &V, envelope: &Envelope, filters: &[V::Filter]) {
    for filter in filters {
        let data = view.render(filter);
        let frame = envelope.state(&data);
        serde_json::from_str::<Value>(frame.as_str()).expect("a state message is JSON");
    }
}

/// Whether `payload` is a JSON object, as every payload of the contract is. (Its first byte
/// past whitespace is enough: the parse succeeded. A full `Value` parse would be stricter than
/// the hub, which skips unknown fields without checking their strings' UTF-8, and need not.)
fn is_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b" \t\n\r".contains(b))
        .is_some_and(|&b| b == b'{')
}

//! The send timestamp every benchmark event carries, and finding it again in what a client
//! receives.
//!
//! The stamp travels in a free-text field that the hub copies to clients verbatim: a task
//! result's `context` (task events) or a location status's `goods_content` (scene status
//! changes). Both reach endpoint 2 / endpoint 3 clients unchanged, and nats-server's WebSocket
//! clients get the raw event JSON, which holds the same string. So one scanner serves every
//! target, and no field is added to the contract for the benchmark's sake.
//!
//! Form: `vb:<round>:<seq>:<sent unix ns>`. The round lets a client ignore stragglers of an
//! earlier round (a sweep reuses its connections); the wall clock is fine because the sender and
//! the receivers run on one machine.

use std::time::{SystemTime, UNIX_EPOCH};

/// What precedes a stamp inside a JSON string: its opening quote and the tag.
const NEEDLE: &[u8] = b"\"vb:";

/// The current wall-clock time in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The text to put into an event: round, sequence number, and now.
pub fn make(round: u32, seq: u64) -> String {
    format!("vb:{round}:{seq}:{}", now_ns())
}

/// A stamp found in a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The measuring round the event was sent in.
    pub round: u32,
    /// The event's number within its key and round.
    pub seq: u64,
    /// When the event was built, in Unix nanoseconds.
    pub sent_ns: u64,
}

/// The first stamp in `bytes`, if there is one.
pub fn find(bytes: &[u8]) -> Option<Stamp> {
    // memchr's SIMD search: every delivered message is scanned, and the generator shares the
    // machine with the server it measures.
    let start = memchr::memmem::find(bytes, NEEDLE)? + NEEDLE.len();
    let mut rest = &bytes[start..];
    let round = take_number(&mut rest, b':')?;
    let seq = take_number(&mut rest, b':')?;
    let sent_ns = take_number(&mut rest, b'"')?;
    Some(Stamp {
        round: u32::try_from(round).ok()?,
        seq,
        sent_ns,
    })
}

/// Parses decimal digits up to `end` (which must follow them) and moves past `end`.
fn take_number(rest: &mut &[u8], end: u8) -> Option<u64> {
    let stop = rest.iter().position(|&b| b == end)?;
    if stop == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &digit in &rest[..stop] {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    *rest = &rest[stop + 1..];
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_found_in_a_client_message() {
        let text = format!(
            r#"{{"type":"task_execution_update","task_record_id":"k","data":[{{"created_at":"x","context":"{}","status":"RUNNING"}}]}}"#,
            "vb:3:42:1700000000000000000"
        );
        assert_eq!(
            find(text.as_bytes()),
            Some(Stamp {
                round: 3,
                seq: 42,
                sent_ns: 1_700_000_000_000_000_000
            })
        );
    }

    #[test]
    fn broken_stamps_are_ignored() {
        assert_eq!(find(b"{\"context\":\"vb:1:2\"}"), None);
        assert_eq!(find(b"{\"context\":\"vb:1:x:3\"}"), None);
        assert_eq!(find(b"{\"context\":\"vb::2:3\"}"), None);
        assert_eq!(find(b"{\"context\":\"seed\"}"), None);
        assert_eq!(find(b"\"vb:1:2:99999999999999999999999\""), None);
    }

    #[test]
    fn made_stamps_parse_back() {
        let made = make(7, 9);
        let stamp = find(format!("\"{made}\"").as_bytes()).map(|s| (s.round, s.seq));
        assert_eq!(stamp, Some((7, 9)));
    }
}

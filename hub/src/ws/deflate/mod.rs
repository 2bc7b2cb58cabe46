//! permessage-deflate (RFC 7692, SPEC 2.6): a storage panel's scene state, hundreds of
//! kilobytes of JSON, goes out at about a tenth of its size.
//!
//! Compression is per message, never per connection: the hub negotiates no context takeover
//! in either direction ([`offer`]), so a message's deflated form depends on nothing but the
//! message. [`crate::messages::Frame`] makes it once, the first time a connection that
//! negotiated the extension writes it, and every such connection shares it as they share the
//! plain text; connections that did not negotiate get the plain text, as before. No connection
//! keeps a compressor or an inflater, so an idle one costs what it cost without the extension.
//! Client messages that arrive compressed are inflated in [`inbound`] on their way in.

pub mod inbound;
pub mod offer;
mod stream;

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, FlushCompress, Status};

pub use stream::Inflating;

/// The 4 bytes that end every sync-flushed deflate block, which section 7.2.1 has the sender
/// leave off each message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How the hub compresses, once a connection has negotiated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Messages shorter than this go plain: a few hundred bytes shrink little, and cost a
    /// client's inflate all the same.
    pub threshold: usize,
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

thread_local! {
    /// One compressor per worker thread, reset between messages: making one allocates and
    /// clears some 256 KiB, which would cost more than deflating a small message. The level
    /// it was made with rides along, so that a change (in tests) makes a new one.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// `text` as the payload of one compressed message (raw deflate, sync-flushed, the tail left
/// off), or `None` when that is no shorter than the text itself.
pub fn deflate(text: &[u8], level: u32) -> Option<Bytes> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compress = match slot {
            Some((made_with, compress)) if *made_with == level => compress,
            _ => {
                let fresh = Compress::new(flate2::Compression::new(level), false);
                &mut slot.insert((level, fresh)).1
            }
        };
        compress.reset();
        let mut out = Vec::with_capacity(text.len() / 4 + 64);
        let mut input = text;
        loop {
            let before = compress.total_in();
            let status = compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .ok()?;
            input = &input[usize::try_from(compress.total_in() - before).ok()?..];
            let finished = input.is_empty() && out.len() < out.capacity();
            if finished || status == Status::StreamEnd {
                break;
            }
            if out.len() >= text.len() {
                // Already no shorter: not worth finishing.
                return None;
            }
            out.reserve(out.capacity().max(1024));
        }
        out.truncate(out.len().checked_sub(TAIL.len())?);
        // Kept as long as the message is queued anywhere: only what it needs.
        out.shrink_to_fit();
        (out.len() < text.len()).then(|| Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut inflater = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        let input = [payload, &TAIL].concat();
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("inflates");
        out
    }

    #[test]
    fn a_message_deflates_on_its_own_and_inflates_back() {
        let scene = r#"{"storage_location_id":"A-01-01","is_occupied":true,"is_locked":false},"#
            .repeat(3000);
        for level in [1, 6, 9] {
            let deflated = deflate(scene.as_bytes(), level).expect("smaller");
            assert!(
                deflated.len() * 10 < scene.len(),
                "level {level}: {}",
                deflated.len()
            );
            assert_eq!(inflate(&deflated), scene.as_bytes());
            // The compressor is reused: the next message depends on nothing before it.
            let again = deflate(b"{\"type\":\"pong\"}{\"type\":\"pong\"}", level).expect("smaller");
            assert_eq!(inflate(&again), b"{\"type\":\"pong\"}{\"type\":\"pong\"}");
        }
    }

    #[test]
    fn text_that_does_not_shrink_goes_plain() {
        let mut random = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = std::iter::repeat_with(|| random.u8(..))
            .take(4096)
            .collect();
        assert_eq!(deflate(&noise, 1), None);
        assert_eq!(deflate(b"", 1), None);
    }
}

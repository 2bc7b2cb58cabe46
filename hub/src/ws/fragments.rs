//! Long messages as several frames (RFC 6455 section 5.4).
//!
//! tungstenite copies each frame whole into a per-connection write buffer, and that buffer
//! keeps the largest size it ever reached. A scene's state runs to hundreds of kilobytes, so
//! one frame per state would leave every storage panel holding that much for as long as it
//! stays connected. Cut into frames of at most [`MAX_FRAME`] bytes, the buffer stays near
//! the size it flushes at. Clients see no difference: a WebSocket API hands them whole
//! messages, however many frames carried them.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The longest frame payload the hub writes.
pub const MAX_FRAME: usize = 8 * 1024;

/// The frames that carry one text message, in order.
pub enum Fragments {
    /// Short enough for one frame.
    Whole(Option<Utf8Bytes>),
    /// What is left to cut, whether the next frame is the first, and whether the payload is
    /// deflated (RFC 7692: RSV1 on the first frame; cut anywhere, as it is not text).
    Cut {
        rest: Bytes,
        first: bool,
        deflated: bool,
    },
}

impl Fragments {
    /// The frames of `text`; none of it is copied.
    pub fn of(text: Utf8Bytes) -> Self {
        if text.len() <= MAX_FRAME {
            Self::Whole(Some(text))
        } else {
            Self::Cut {
                rest: Bytes::from(text),
                first: true,
                deflated: false,
            }
        }
    }

    /// The frames of a message whose payload is `deflated` (see [`super::deflate`]).
    pub fn deflated(deflated: Bytes) -> Self {
        Self::Cut {
            rest: deflated,
            first: true,
            deflated: true,
        }
    }
}

impl Iterator for Fragments {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        match self {
            Self::Whole(text) => text.take().map(Message::Text),
            Self::Cut {
                rest,
                first,
                deflated,
            } => {
                if rest.is_empty() {
                    return None;
                }
                let cut = if *deflated {
                    rest.len().min(MAX_FRAME)
                } else {
                    char_boundary_at_most(rest, MAX_FRAME)
                };
                let piece = rest.split_to(cut);
                let first = std::mem::take(first);
                let opcode = if first {
                    OpCode::Data(Data::Text)
                } else {
                    OpCode::Data(Data::Continue)
                };
                let last = rest.is_empty();
                let mut frame = WireFrame::message(piece, opcode, last);
                frame.header_mut().rsv1 = first && *deflated;
                Some(Message::Frame(frame))
            }
        }
    }
}

/// The largest cut at or below `max` that does not split a UTF-8 character, so that every
/// frame is valid text on its own: the RFC allows a cut anywhere, but a client that checks
/// each frame should not trip on ours. (`text` is valid UTF-8, so a boundary is at most three
/// bytes back.)
fn char_boundary_at_most(text: &[u8], max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut cut = max;
    // Continuation bytes are 0b10xx_xxxx.
    while cut > 0 && text[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(text: &str) -> Vec<(bool, OpCode, String)> {
        Fragments::of(Utf8Bytes::from(text.to_owned()))
            .map(|message| match message {
                Message::Text(text) => (true, OpCode::Data(Data::Text), text.to_string()),
                Message::Frame(frame) => (
                    frame.header().is_final,
                    frame.header().opcode,
                    String::from_utf8(frame.payload().to_vec()).expect("a frame split a character"),
                ),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_short_message_is_one_text_message() {
        let small = "x".repeat(MAX_FRAME);
        assert_eq!(frames(&small), [(true, OpCode::Data(Data::Text), small)]);
    }

    #[test]
    fn a_long_message_is_text_then_continuations_and_only_the_last_is_final() {
        let long = "a".repeat(2 * MAX_FRAME + 5);
        let got = frames(&long);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0, got[0].1), (false, OpCode::Data(Data::Text)));
        assert_eq!((got[1].0, got[1].1), (false, OpCode::Data(Data::Continue)));
        assert_eq!((got[2].0, got[2].1), (true, OpCode::Data(Data::Continue)));
        assert_eq!(got.iter().map(|f| f.2.as_str()).collect::<String>(), long);
    }

    #[test]
    fn a_deflated_payload_is_cut_anywhere_with_rsv1_on_the_first_frame_alone() {
        let payload = Bytes::from(vec![0xE5_u8; MAX_FRAME + 3]);
        let frames: Vec<_> = Fragments::deflated(payload)
            .map(|message| match message {
                Message::Frame(frame) => (
                    frame.header().rsv1,
                    frame.header().is_final,
                    frame.header().opcode,
                    frame.payload().len(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            frames,
            [
                (true, false, OpCode::Data(Data::Text), MAX_FRAME),
                (false, true, OpCode::Data(Data::Continue), 3)
            ]
        );
        let short: Vec<_> = Fragments::deflated(Bytes::from_static(b"xyz")).collect();
        assert!(
            matches!(&short[..], [Message::Frame(f)] if f.header().rsv1 && f.header().is_final)
        );
    }

    #[test]
    fn cuts_never_split_a_character() {
        // 3-byte characters, offset by one so that MAX_FRAME falls inside one.
        let long = format!("a{}", "库".repeat(MAX_FRAME));
        let got = frames(&long);
        assert!(got.len() > 3);
        assert!(got.iter().all(|f| f.2.len() <= MAX_FRAME));
        assert_eq!(got.iter().map(|f| f.2.as_str()).collect::<String>(), long);
    }
}
